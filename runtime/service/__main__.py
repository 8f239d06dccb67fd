"""``python -m lungedge.runtime.service``: what ``lungedge serve`` runs (the systemd unit and container use it)."""

import sys

from lungedge.runtime.service.cli import main

if __name__ == "__main__":
    sys.exit(main())
