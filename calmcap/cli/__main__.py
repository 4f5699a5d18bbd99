"""``python -m calmcap.cli ...`` is ``calmcap ...``."""

import sys

from calmcap.cli import main

if __name__ == "__main__":
    sys.exit(main())
