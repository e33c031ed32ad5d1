"""Count the code lines two modules share word for word.

    python tools/shared_lines.py reliable_tcp/sync/_session.py reliable_tcp/asyncio/_session.py

A code line is a non-blank line outside docstrings and comments, compared
with its indentation stripped; lines that carry no decision (``else:``,
``return``, ``try:``, a lone bracket) are not counted. Each shared line is
counted as often as it appears in both. The second figure leaves out
imports and ``def`` lines with their parameters (two fronts implementing one
interface share those by design). Used to watch the session policy stay
written once (docs/design.md).
"""

from __future__ import annotations

import ast
import io
import sys
import tokenize
from collections import Counter
from pathlib import Path

_TRIVIAL = {"else:", "try:", "finally:", "return", "pass", "continue", "break", ")", "]", "}", "):", "return None",
            "return False", "return True"}


def code_lines(path: Path) -> Counter[str]:
    """The file's code lines (see the module docstring), with their counts."""
    source = path.read_text()
    docstring_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            docstring_lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    comment_only: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and not token.line[: token.start[1]].strip():
            comment_only.add(token.start[0])
    counts: Counter[str] = Counter()
    for number, line in enumerate(source.splitlines(), 1):
        text = line.split("  #")[0].strip()
        if text and number not in docstring_lines and number not in comment_only and text not in _TRIVIAL:
            counts[text] += 1
    return counts


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    first, second = (code_lines(Path(name)) for name in argv)
    shared = first & second
    for line, count in sorted(shared.items()):
        print(f"{count:3d}  {line}")
    glue = sum(count for line, count in shared.items() if _is_glue(line))
    print(f"{sum(shared.values())} shared code lines ({sum(shared.values()) - glue} without imports and signatures);"
          f" {sum(first.values())} and {sum(second.values())} code lines")
    return 0


def _is_glue(line: str) -> bool:
    """An import, a def line or a parameter of one: the same interface
    implemented twice, not a decision made twice."""
    return (
        line.startswith(("import ", "from ", "def ", "async def ", "@", "if TYPE_CHECKING"))
        or line in ("self,", "*,", ") -> None:")
        or (line.endswith(",") and ":" in line and "=" not in line.split(":", 1)[0] and "(" not in line.split(":", 1)[0])
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
