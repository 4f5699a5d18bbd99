"""``python -m calmcap.cli ...`` is ``calmcap ...``."""

import sys

from calmcap.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
