"""The guide's runnable examples run: each block after an
``<!-- example: NAME -->`` marker is executed as a program on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "guide.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: ([\w-]+) -->\n```python\n(.*?)```", GUIDE, re.S))


def test_the_guide_has_its_examples() -> None:
    assert "asyncio-echo" in EXAMPLES


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_guide_example_runs(name: str, tmp_path: Path) -> None:
    script = tmp_path / f"{name}.py"
    script.write_text(EXAMPLES[name])
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    if name == "asyncio-echo":
        assert done.stdout.splitlines() == ["echo: message 0", "echo: message 1", "echo: message 2"]
