"""Build script: pure Python by default, the hot modules compiled on request.

``pip install .`` installs the sources as they are (the reference build).
``RELIABLE_TCP_COMPILE=1 pip install .`` compiles the modules in
``COMPILED_MODULES`` to C extensions with mypyc, a build-time tool only:
the compiled build needs nothing at run time that the pure one does not.
Everything else (metadata, packages, entry points) is in setup.cfg.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tools"))
from build_backend import compile_now  # noqa: E402  (after the path is set)

#: The modules compiled by RELIABLE_TCP_COMPILE=1: the pure core and the
#: shell's per-message path. docs/performance.md says why the others stay
#: interpreted.
COMPILED_MODULES = [
    "reliable_tcp/core/engine.py",
    "reliable_tcp/core/events.py",
    "reliable_tcp/core/frames.py",
    "reliable_tcp/core/handshake.py",
    "reliable_tcp/core/state.py",
    "reliable_tcp/core/window.py",
    "reliable_tcp/common/front.py",
    "reliable_tcp/common/session.py",
    "reliable_tcp/sync/_inbox.py",
    "reliable_tcp/sync/_link.py",
    "reliable_tcp/sync/_session.py",
    "reliable_tcp/asyncio/_inbox.py",
    "reliable_tcp/asyncio/_link.py",
    "reliable_tcp/asyncio/_session.py",
    "reliable_tcp/asyncio/_timers.py",
]


def compiled_extensions() -> list[object]:
    """The mypyc extensions, or none for the pure build."""
    if not compile_now():
        return []
    from mypyc.build import mypycify

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=compiled_extensions())
