"""``python -m fastcert ...``: same as the ``fastcert`` console script."""

from __future__ import annotations

import sys

from fastcert.cli import main

if __name__ == "__main__":
    sys.exit(main())
