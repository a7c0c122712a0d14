"""The objects of the check language: a check, its result, its error, and the
environment a linker provides to evaluate it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from rtdyld.errors import LinkError


class CheckError(LinkError):
    """A check that cannot be evaluated: a syntax error, an unknown symbol,
    section, GOT entry or stub, unreadable memory, or an instruction operand
    that cannot be decoded.

    ``source``, ``line`` and ``column`` say where in the check file the
    problem is, when that is known (``None`` otherwise).
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ):
        super().__init__(message)
        self.source = source
        self.line = line
        self.column = column


@dataclass(frozen=True)
class Check:
    """One ``LHS = RHS`` check as it appears in a source file.

    ``text`` is the expression after the ``PREFIX:`` marker, with
    continuation lines joined; ``line`` and ``column`` locate ``text[0]``.
    ``pieces`` maps offsets in ``text`` back to the file for checks that span
    several lines: each entry is ``(offset in text, line, column)`` of the
    start of one joined piece (empty for a single-line check).
    """

    source: str
    line: int
    text: str
    column: int = 1
    pieces: tuple[tuple[int, int, int], ...] = ()

    def locate(self, offset: int) -> tuple[int, int]:
        """The 1-based (line, column) in the file of ``text[offset]``."""
        line, column, start = self.line, self.column, 0
        for piece_offset, piece_line, piece_column in self.pieces:
            if piece_offset > offset:
                break
            line, column, start = piece_line, piece_column, piece_offset
        return line, column + offset - start

    @property
    def expression(self) -> str:
        """``text`` with runs of white space collapsed, for messages."""
        return " ".join(self.text.split())


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: both sides' values and whether they agree."""

    check: Check
    lhs: int
    rhs: int

    @property
    def passed(self) -> bool:
        return self.lhs == self.rhs

    @property
    def message(self) -> str:
        """``file.s:12: check failed: LHS = RHS: 0x1234 != 0x1238`` (or
        ``check passed`` with ``==``)."""
        verdict, relation = ("passed", "==") if self.passed else ("failed", "!=")
        return (
            f"{self.check.source}:{self.check.line}: check {verdict}: "
            f"{self.check.expression}: {self.lhs:#x} {relation} {self.rhs:#x}"
        )


class CheckEnv(Protocol):
    """What a linker provides to evaluate checks against a finished link.

    Every address is a *target* address (where the code runs), never the
    address of the linker's working memory.  Each method raises
    :class:`CheckError` (without a location; the evaluator adds it) when it
    has no answer.
    """

    def symbol_address(self, name: str) -> int:
        """The address of symbol ``name``."""
        ...

    def read_memory(self, addr: int, size: int) -> bytes:
        """The linked bytes at ``[addr, addr + size)``.  Fewer bytes may come
        back only when the range runs past the end of the memory that holds
        ``addr``; an ``addr`` outside linked memory raises."""
        ...

    def section_address(self, file: str, section: str) -> int:
        """The address of section ``section`` of object ``file``."""
        ...

    def got_address(self, file: str, symbol: str) -> int:
        """The address of the GOT entry for ``symbol`` built for ``file``."""
        ...

    def stub_address(self, file: str, section: str | None, symbol: str) -> int:
        """The address of the stub for ``symbol`` built for ``file`` (and,
        when not ``None``, for references from its section ``section``)."""
        ...


__all__ = ["Check", "CheckEnv", "CheckError", "CheckResult"]
