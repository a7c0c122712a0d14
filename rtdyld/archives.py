"""Lazy archive extraction: pull exactly the members a batch needs.

The semantics of a static linker (and of ORC's static library generator):
a member is loaded only if it defines a symbol that is still undefined, and
loading it may leave new undefined symbols, so the search repeats as a
worklist until nothing new is needed.  Weak undefined references and
tentative (common) definitions pull nothing.  Each member is loaded at most
once per session; removing the batch that holds it makes it available again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .inputs import parse_object
from .objfile.archive import Archive, ArchiveCache, Member
from .objfile.model import SEC_ABS, SEC_UNDEF, Bind, ObjectFile


def defined_globals(obj: ObjectFile) -> list[str]:
    """Names an object defines for others (global or weak, in a section or absolute)."""
    s = obj.symbols
    m = ((s["section"] >= 0) | (s["section"] == SEC_ABS)) & (s["bind"] != Bind.LOCAL)
    return [obj.names[i] for i in np.flatnonzero(m).tolist() if obj.names[i]]


def strong_undefined(obj: ObjectFile) -> list[str]:
    """Names an object needs from elsewhere (weak references do not pull members)."""
    s = obj.symbols
    m = (s["section"] == SEC_UNDEF) & (s["bind"] == Bind.GLOBAL)
    return [obj.names[i] for i in np.flatnonzero(m).tolist() if obj.names[i]]


def list_member_definitions(data: memoryview, name: str) -> list[str]:
    """Index builder for archives without a symbol table: read the member."""
    return defined_globals(parse_object(data, name))


@dataclass
class Pull:
    """Why a member was loaded: ``symbol`` was undefined in ``referrer``."""

    member: Member
    symbol: str
    referrer: str


class ArchiveSet:
    """The archives registered with a session, in search order."""

    def __init__(self) -> None:
        self.cache = ArchiveCache()
        self.archives: list[Archive] = []
        self.loaded: set[tuple[int, int]] = set()  # (id(archive), header_offset)

    def add(self, path) -> Archive:
        ar = self.cache.get(path, list_definitions=list_member_definitions)
        if ar not in self.archives:
            self.archives.append(ar)
        return ar

    @staticmethod
    def key(member: Member) -> tuple[int, int]:
        return (id(member.archive), member.header_offset)

    def pull(self, objects: list[ObjectFile], is_defined_elsewhere) -> list[tuple[ObjectFile, Pull]]:
        """Members to add to a batch of ``objects``, with the reason for each.

        ``is_defined_elsewhere(name, prefix)`` says whether an earlier batch, a
        user definition (anything that outranks archives) already has it.
        """
        if not self.archives:
            return []
        defined: set[str] = set()
        wanted: dict[str, str] = {}  # name -> first referrer
        prefix_of: dict[str, str] = {}
        work = list(objects)
        pulled: list[tuple[ObjectFile, Pull]] = []
        taken: set[tuple[int, int]] = set()
        while work:
            for obj in work:
                defined.update(defined_globals(obj))
                for name in strong_undefined(obj):
                    wanted.setdefault(name, obj.name)
                    prefix_of.setdefault(name, obj.symbol_prefix)
            work = []
            for name, referrer in list(wanted.items()):
                if name in defined:
                    del wanted[name]
                    continue
                if is_defined_elsewhere(name, prefix_of[name]):
                    del wanted[name]
                    continue
                member = self._first_definer(name, taken)
                del wanted[name]
                if member is None:
                    continue
                taken.add(self.key(member))
                obj = parse_object(member.data, member.display_name)
                pulled.append((obj, Pull(member, name, referrer)))
                work.append(obj)
        return pulled

    def _first_definer(self, name: str, taken: set) -> Member | None:
        for ar in self.archives:
            for m in ar.definers(name):
                k = self.key(m)
                if k in self.loaded:
                    return None  # already in the session: its batch publishes the name
                if k not in taken:
                    return m
                return None
        return None

    def whole(self, ar: Archive) -> list[tuple[ObjectFile, Pull]]:
        out = []
        for m in ar.members:
            if self.key(m) in self.loaded:
                continue
            out.append((parse_object(m.data, m.display_name), Pull(m, "", "--whole-archive")))
        return out
