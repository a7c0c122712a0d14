"""Parse /proc/<pid>/maps: which address ranges are mapped, and how."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/<pid>/maps: ``[start, end)`` with ``perms`` like ``'r-xp'``.

    ``path`` is the file or pseudo name (``'[stack]'``), ``''`` for anonymous
    memory.
    """

    start: int
    end: int
    perms: str
    path: str

    @property
    def readable(self) -> bool:
        return self.perms[0] == "r"

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of a maps file into mappings, in file (address) order."""
    mappings = []
    for line in text.splitlines():
        # Six fields; the last (the path) may itself contain spaces or be absent.
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        lo, _, hi = fields[0].partition("-")
        path = fields[5] if len(fields) == 6 else ""
        mappings.append(Mapping(int(lo, 16), int(hi, 16), fields[1], path))
    return mappings


def read_maps(pid: int | str = "self") -> list[Mapping]:
    """Return the current mappings of process ``pid`` (default: this process)."""
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as f:
        return parse_maps(f.read())
