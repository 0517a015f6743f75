# Run txmailhub from a .tac file: `twistd -ny mailhub.tac`.
# The same MailHub service can be added to any Twisted application.
from twisted.application.service import Application

from txmailhub.config import load
from txmailhub.service import MailHub

application = Application("mailhub")
hub = MailHub(load("/etc/txmailhub/mailhub.toml"))
# Daemonized (`twistd -y mailhub.tac`), add the two lines below: a start
# error (a port in use) then reaches twistd's waiting parent, which prints it
# and exits 1; without them that parent waits for good.
#   from txmailhub.service import DaemonStartError
#   hub.start_error_type = DaemonStartError
hub.setServiceParent(application)
