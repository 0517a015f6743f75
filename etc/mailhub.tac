# Run txmailhub from a .tac file: `twistd -ny mailhub.tac`.
# The same MailHub service can be added to any Twisted application.
from twisted.application.service import Application

from txmailhub.allocator import tune_malloc
from txmailhub.service import DaemonStartError, MailHub
from txmailhub.tap import HangupNotice, settings_or_exit

# What `twistd mailhub` does at its start: with glibc, have malloc unmap
# the 16 MiB block of each password check when it is freed (otherwise
# glibc keeps it in the malloc arena of the thread that ran the check: a
# hub at 56 MiB of RSS held 338 MiB after a burst of logins).  It leaves
# a malloc tuned through the environment (GLIBC_TUNABLES, MALLOC_*) as it
# is, and does nothing with another C library.  Drop it where another
# part of the application owns the allocator.
tune_malloc()

application = Application("mailhub")
# The config as `twistd mailhub` reads it: warnings on standard error, and
# a problem (a typo in a key) one line each and exit status 2, where
# `load` raised ConfigError, which twistd shows as a traceback (exit 1).
# It also judges twistd's --rundir, pid file and log file as twistd -y
# will use them once this file is loaded (a --rundir of ".", the folder
# twistd starts in, that the user it runs as may not enter): one line
# each and exit status 2, not twistd's traceback.  Keep the call here, at
# the top level of the file: it finds twistd's options as it runs.
hub = MailHub(settings_or_exit("/etc/txmailhub/mailhub.toml"))
# A start error (a port in use) as an exception twistd reports: daemonized
# (`twistd -y mailhub.tac`) it reaches twistd's waiting parent, which prints
# it and exits 1 (without this line that parent waits for good); in the
# foreground (`-ny`) it is one line and exit status 1, and twistd removes
# its pid file.  Keep it in any .tac.
hub.start_error_type = DaemonStartError
# SIGHUP reads the TLS certificate and key again and logs a line, as under
# `twistd mailhub` (docs/deployment.rst); a SIGUSR1 with no log file of
# twistd's to rotate (`-ny`: standard output) gets a line too.  Without
# it, either signal ends the hub at once.  A SIGHUP handler of your own,
# installed before, is still called (docs/embedding.rst).
HangupNotice(hub.components.tls).setServiceParent(hub)
hub.setServiceParent(application)
