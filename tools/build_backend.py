"""The PEP 517 build backend: setuptools, plus mypyc when the compiled build is asked for.

``RELIABLE_TCP_COMPILE=1 pip install .`` asks for the compiled build
(setup.py lists the modules). Only that build needs mypy, which ships
mypyc, so only then is it added to the build requirements: a plain
``pip install .`` downloads nothing more. Only ``build_wheel`` compiles:
setuptools also runs setup.py to list requirements (mypy is not installed
yet) and to write the metadata (which compiling does not change). An editable install with
RELIABLE_TCP_COMPILE=1 is refused: its extensions would be built into the
checkout and shadow the sources in every later run, even a pure one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the hooks not redefined here are setuptools' own)

#: True when RELIABLE_TCP_COMPILE asks for the compiled build.
COMPILE_REQUESTED = os.environ.get("RELIABLE_TCP_COMPILE", "0") not in ("", "0")

#: The compiler's distribution: mypyc ships inside mypy.
MYPYC_REQUIREMENT = "mypy>=1.11"

_compiling = False
_Result = TypeVar("_Result")


def compile_now() -> bool:
    """Whether setup.py, as it runs now, builds the mypyc extensions."""
    return _compiling


def _compiled(hook: Callable[..., _Result], *args: Any) -> _Result:
    global _compiling
    _compiling = COMPILE_REQUESTED
    try:
        return hook(*args)
    finally:
        _compiling = False


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' requirements, plus mypy for the compiled build."""
    requirements: list[str] = _setuptools.get_requires_for_build_wheel(config_settings)
    return [*requirements, MYPYC_REQUIREMENT] if COMPILE_REQUESTED else requirements


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None) -> str:
    """setuptools' wheel, with the extensions when RELIABLE_TCP_COMPILE asks for them."""
    name: str = _compiled(_setuptools.build_wheel, wheel_directory, config_settings, metadata_directory)
    return name


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None, metadata_directory: str | None = None) -> str:
    """setuptools' editable wheel; refused for the compiled build (see the module docstring)."""
    if COMPILE_REQUESTED:
        raise SystemExit("RELIABLE_TCP_COMPILE=1: the compiled build is not editable; use `pip install .` (without -e)")
    name: str = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return name
