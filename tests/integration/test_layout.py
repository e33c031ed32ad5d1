"""The package's layers, checked on its import statements (docs/design.md).

core/ is sans-I/O and imports nothing of the package but ``exceptions``;
durable/ (the journal) builds on core/ only; common/ (what both fronts
share, the session and listener policy among it) on core/ and durable/;
neither imports a front; the two fronts
do not import each other; cli/ and testing/ sit on top, and nothing in the
library imports them; no module imports another module's private name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "reliable_tcp"

#: For each layer, the layers of the package its modules may import.
ALLOWED = {
    "core": {"core", "exceptions"},
    "common": {"core", "common", "durable", "exceptions"},
    "durable": {"core", "durable", "exceptions"},
    "sync": {"core", "common", "durable", "sync", "exceptions"},
    "asyncio": {"core", "common", "durable", "asyncio", "exceptions"},
    "cli": {"core", "common", "durable", "sync", "asyncio", "cli", "testing", "exceptions"},
    "testing": {"core", "common", "testing", "exceptions"},
}

#: At most three modules live directly in the package besides __init__ and __main__.
TOP_LEVEL = {"__init__.py", "__main__.py", "exceptions.py"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names) for every import of the package in ``path``,
    as absolute module names below ``reliable_tcp``."""
    relative_parts = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(relative_parts[:-1])  # __init__ files are in their own package too
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("reliable_tcp"):
                module = node.module.removeprefix("reliable_tcp").lstrip(".")
            else:
                continue
            names = [alias.name for alias in node.names]
            if module == "" or (len(module.split(".")) == 1 and (PACKAGE / module).is_dir()):
                # "from . import x" / "from ..core import events": each name is a module
                found.extend((f"{module}.{name}".lstrip("."), []) for name in names)
            else:
                found.append((module, names))
        elif isinstance(node, ast.Import):
            found.extend((alias.name.removeprefix("reliable_tcp").lstrip("."), [])
                         for alias in node.names if alias.name.startswith("reliable_tcp."))
    return found


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_the_top_level_holds_only_the_entry_points_and_the_exceptions() -> None:
    assert {path.name for path in PACKAGE.glob("*.py")} == TOP_LEVEL
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(ALLOWED)


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_each_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = _layer(".".join(path.relative_to(PACKAGE).parts))
    if layer not in ALLOWED:  # the package's own __init__ and __main__ re-export the fronts and the CLI
        return
    for module, _ in _imports(path):
        assert _layer(module) in ALLOWED[layer], f"{path.relative_to(PACKAGE)} imports reliable_tcp.{module}"


@pytest.mark.parametrize("path", _modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_another_modules_private_name(path: Path) -> None:
    for module, names in _imports(path):
        private = [name for name in names if name.startswith("_") and not name.startswith("__")]
        assert not private, f"{path.relative_to(PACKAGE)} imports {private} from reliable_tcp.{module}"


def test_the_checks_see_real_imports() -> None:
    """The checks above would pass vacuously if _imports found nothing."""
    imports = dict(_imports(PACKAGE / "sync" / "client.py"))
    assert "core.engine" in imports and "durable.session_journal" in imports
    assert ("core.events", []) in _imports(PACKAGE / "common" / "session.py")
