"""Parse /proc/<pid>/maps: which address ranges are mapped, and how."""

from __future__ import annotations


class Mapping:
    """One line of /proc/<pid>/maps: ``[start, end)`` with ``perms`` like ``'r-xp'``.

    ``path`` is the file or pseudo name (``'[stack]'``), ``''`` for anonymous
    memory.  Compared by value.  (A plain class, not a dataclass: the
    dataclasses module imports inspect, ~10 ms of a new process.)
    """

    __slots__ = ("end", "path", "perms", "start")

    def __init__(self, start: int, end: int, perms: str, path: str) -> None:
        self.start = start
        self.end = end
        self.perms = perms
        self.path = path

    def _key(self) -> tuple:
        return (self.start, self.end, self.perms, self.path)

    def __eq__(self, other):
        return self._key() == other._key() if other.__class__ is self.__class__ else NotImplemented

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Mapping(start={self.start!r}, end={self.end!r}, perms={self.perms!r}, path={self.path!r})"

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
