# Run txmailhub from a .tac file: `twistd -ny mailhub.tac`.
# The same MailHub service can be added to any Twisted application.
from twisted.application.service import Application

from txmailhub.config import load
from txmailhub.service import DaemonStartError, MailHub

application = Application("mailhub")
hub = MailHub(load("/etc/txmailhub/mailhub.toml"))
# A start error (a port in use) as an exception twistd reports: daemonized
# (`twistd -y mailhub.tac`) it reaches twistd's waiting parent, which prints
# it and exits 1 (without this line that parent waits for good); in the
# foreground (`-ny`) it is one line and exit status 1, and twistd removes
# its pid file.  Keep it in any .tac.
hub.start_error_type = DaemonStartError
hub.setServiceParent(application)
