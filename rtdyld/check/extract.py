"""Finding the checks in a source file.

A check is a comment line ``# PREFIX: LHS = RHS`` (the comment marker may
also be ``//`` or ``;``).  As in LLVM, a check whose text ends with ``\\``
goes on at the next line that carries a prefix, whose text after the prefix
is appended as it stands (nothing is inserted between the pieces); blank
lines in between are skipped.  Beyond LLVM, a continuation may also be a
plain comment line, whose text after the comment marker is appended, and
trailing white space after the ``\\`` is allowed.  A check with no text is
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rtdyld.check.model import Check

DEFAULT_PREFIXES = ("rtdyld-check", "jitlink-check")

_COMMENT = r"(?:#|//|;)"
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def extract_checks(
    text: str,
    prefixes: Iterable[str] = DEFAULT_PREFIXES,
    source: str = "file.s",
) -> list[Check]:
    """Every check in ``text``, in order, each with ``source``, the line and
    column where its expression starts, and its expression text."""
    names = "|".join(re.escape(p) for p in prefixes)
    check_line = re.compile(rf"\s*{_COMMENT}\s*(?:{names}):")
    comment_line = re.compile(rf"\s*{_COMMENT}")

    checks: list[Check] = []
    pieces: list[tuple[int, int, int]] = []
    parts: list[str] = []

    def finish() -> None:
        text = "".join(parts)
        if text.strip():
            line, column = pieces[0][1], pieces[0][2]
            checks.append(Check(source, line, text, column, tuple(pieces) if len(pieces) > 1 else ()))
        parts.clear()
        pieces.clear()

    for number, line in enumerate(_LINE_BREAK.split(text), 1):
        if parts and not line.strip():
            continue
        match = check_line.match(line)
        if match is None and parts:
            match = comment_line.match(line)
            if match is None:
                finish()
        if match is None:
            continue
        piece = line[match.end() :]
        pieces.append((sum(len(p) for p in parts), number, match.end() + 1))
        stripped = piece.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
        else:
            parts.append(piece)
            finish()
    if parts:
        finish()
    return checks


__all__ = ["DEFAULT_PREFIXES", "extract_checks"]
