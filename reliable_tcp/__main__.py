"""``python -m reliable_tcp``: the same as the ``rtcat`` command."""

from __future__ import annotations

import sys

from .cli.commands import rtcat_main

if __name__ == "__main__":
    sys.exit(rtcat_main())
