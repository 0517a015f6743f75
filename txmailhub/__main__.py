"""``python -m txmailhub`` is the same as the ``mailhub`` command."""

import sys

from txmailhub.cli import main

sys.exit(main())
