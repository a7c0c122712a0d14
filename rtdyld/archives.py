"""Lazy archive extraction: pull exactly the members a batch needs.

The semantics of a static linker (and of ORC's static library generator):
a member is loaded only if it defines a symbol that is still undefined, and
loading it may leave new undefined symbols, so the search repeats as a
worklist until nothing new is needed.  Weak undefined references and
tentative (common) definitions pull nothing.  Each member is loaded at most
once per session; removing the batch that holds it makes it available again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .inputs import parse_member
from .objfile.archive import Archive, ArchiveCache, Member
from .objfile.model import SEC_ABS, SEC_COMMON, SEC_UNDEF, Bind, ObjectFile


def defined_globals(obj: ObjectFile) -> list[str]:
    """Names an object defines for others: global or weak, in a section,
    absolute, or tentative (a common symbol satisfies a reference, as in ld)."""
    if getattr(obj, "pull_names", None) is not None:  # worked out when the member was read
        return obj.pull_names[0]
    s = obj.symbols
    sec = s["section"]
    m = ((sec >= 0) | (sec == SEC_ABS) | (sec == SEC_COMMON)) & (s["bind"] != Bind.LOCAL)
    return [obj.names[i] for i in np.flatnonzero(m).tolist() if obj.names[i]]


def strong_undefined(obj: ObjectFile) -> list[str]:
    """Names an object needs from elsewhere (weak references do not pull members)."""
    if getattr(obj, "pull_names", None) is not None:
        return obj.pull_names[1]
    s = obj.symbols
    m = (s["section"] == SEC_UNDEF) & (s["bind"] == Bind.GLOBAL)
    return [obj.names[i] for i in np.flatnonzero(m).tolist() if obj.names[i]]


def list_member_definitions(data: memoryview, name: str) -> list[str]:
    """Index builder for archives without a symbol table: read the member."""
    return defined_globals(parse_member(data, name))


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
        self.parse = parse_member  # member bytes -> ObjectFile; a link cache puts its own here

    def open(self, path) -> Archive:
        # Absolute, so thin members still resolve after the process changes directory.
        return self.cache.get(os.path.abspath(path), list_definitions=list_member_definitions)

    def register(self, ar: Archive) -> None:
        """Make ``ar`` part of the search order (a rebuilt file replaces its old self)."""
        self.archives = [a for a in self.archives if a is not ar and a.name != ar.name]
        self.archives.append(ar)

    @staticmethod
    def key(member: Member) -> tuple[int, int]:
        return (id(member.archive), member.header_offset)

    def pull(self, objects: list[ObjectFile], is_defined_elsewhere, extra: list[Archive] = ()
             ) -> list[tuple[ObjectFile, Pull]]:
        """Members to add to a batch of ``objects``, with the reason for each.

        ``is_defined_elsewhere(name, prefix)`` says whether an earlier batch, a
        user definition (anything that outranks archives) already has it.
        ``extra`` are archives registered by the batch itself, searched last.
        """
        search = [a for a in self.archives if a not in extra] + list(extra)
        if not search:
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
            asked, wanted = wanted, {}
            for name, referrer in asked.items():
                if name in defined or is_defined_elsewhere(name, prefix_of[name]):
                    continue
                member = self._first_definer(search, name, taken)
                if member is None:
                    continue
                taken.add(self.key(member))
                obj = self.parse(member.data, member.display_name)
                pulled.append((obj, Pull(member, name, referrer)))
                work.append(obj)
        return pulled

    def _first_definer(self, search: list[Archive], name: str, taken: set) -> Member | None:
        for ar in search:
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
            out.append((self.parse(m.data, m.display_name), Pull(m, "", "--whole-archive")))
        return out
