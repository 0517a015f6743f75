# Run txmailhub from a .tac file: `twistd -ny mailhub.tac`.
# The same MailHub service can be added to any Twisted application.
from twisted.application.service import Application

from txmailhub.config import load
from txmailhub.service import MailHub

application = Application("mailhub")
MailHub(load("/etc/txmailhub/mailhub.toml")).setServiceParent(application)
