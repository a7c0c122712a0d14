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

from .inputs import parse_member
from .lazy_numpy import np
from .objfile.archive import Archive, ArchiveCache, Member
from .objfile.model import ObjectFile, names_by_role_of_rows

SMALL_TABLE = 1024  # symbols; see names_by_role


def defined_globals(obj: ObjectFile) -> list[str]:
    """Names an object defines for others: global or weak, in a section,
    absolute, or tentative (a common symbol satisfies a reference, as in ld)."""
    return names_by_role(obj)[0]


def strong_undefined(obj: ObjectFile) -> list[str]:
    """Names an object needs from elsewhere (weak references do not pull members)."""
    return names_by_role(obj)[1]


def names_by_role(obj: ObjectFile) -> tuple[list[str], list[str]]:
    """(:func:`defined_globals`, :func:`strong_undefined`) of ``obj`` together."""
    if getattr(obj, "pull_names", None) is not None:  # worked out when the member was read
        return obj.pull_names
    s = obj.symbols
    # One plain pass over the rows: numpy masks cost more than the pass for
    # the tables of typical program objects, even more so with the caches
    # cold at the start of a link (measured, 9 symbols: 34 us plain, 93 us
    # with masks).  A large table has its local rows dropped by numpy first.
    if len(s) <= SMALL_TABLE:
        rows: range | list[int] = range(len(s))
        sections, binds = s["section"].tolist(), s["bind"].tolist()
    else:
        rows = np.flatnonzero(s["bind"]).tolist()
        sections, binds = s["section"][rows].tolist(), s["bind"][rows].tolist()
    return names_by_role_of_rows(rows, sections, binds, obj.names)


def list_member_definitions(data: memoryview, name: str) -> list[str]:
    """Index builder for archives without a symbol table: read the member."""
    return defined_globals(parse_member(data, name))


class Pull:
    """Why a member was loaded: ``symbol`` was undefined in ``referrer``."""

    # A plain class: a dataclass decoration execs generated code at import (start-up).
    def __init__(self, member: Member, symbol: str, referrer: str) -> None:
        self.member = member
        self.symbol = symbol
        self.referrer = referrer


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
        return (id(member.archive), member.header_offset)  # (a warm batch's pulls write it out: linkcache.plan)

    def member_keys(self, pulls) -> list[tuple[int, int]]:
        """The keys of the members a batch's ``pulls`` loaded: a warm batch
        knows them without making its pulls."""
        keys = getattr(pulls, "member_keys", None)
        return keys if keys is not None else [self.key(p.member) for p in pulls.values()]

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
        work = list(objects)
        pulled: list[tuple[ObjectFile, Pull]] = []
        taken: set[tuple[int, int]] = set()
        while work:
            needed: dict[str, ObjectFile] = {}  # name -> the first object needing it, in that order
            for obj in work:
                defines, needs = names_by_role(obj)
                defined.update(defines)
                for name in needs:
                    if name not in needed:
                        needed[name] = obj
            names = [n for n in needed if n not in defined]
            offered = None
            if names and all(ar.indexed for ar in search):
                # Most names (the C library's) are in no index: one set
                # intersection per archive finds the few that are, and only
                # those are looked at one by one.  (An archive not indexed yet
                # is indexed by reading its members: it is asked name by name,
                # only for names nothing outranking archives defines.)
                offered = _first_definers(search, names)
                names = [n for n in names if n in offered]
            work = []
            for name in names:
                referrer = needed[name]
                if is_defined_elsewhere(name, referrer.symbol_prefix):
                    continue
                member = offered[name] if offered is not None else _first_definer(search, name)
                if member is None:
                    continue
                k = self.key(member)
                if k in self.loaded or k in taken:
                    continue  # in the session already (its batch publishes the name), or pulled this link
                taken.add(k)
                obj = self.parse(member.data, member.display_name)
                pulled.append((obj, Pull(member, name, referrer.name)))
                work.append(obj)
        return pulled

    def whole(self, ar: Archive) -> list[tuple[ObjectFile, Pull]]:
        out = []
        for m in ar.members:
            if self.key(m) in self.loaded:
                continue
            out.append((self.parse(m.data, m.display_name), Pull(m, "", "--whole-archive")))
        return out


def _first_definer(search: list[Archive], name: str) -> Member | None:
    """The member that defines ``name`` for a linker: the first the index of
    the first archive listing it names."""
    for ar in search:
        found = ar.definers(name)
        if found:
            return found[0]
    return None


def _first_definers(search: list[Archive], names: list[str]) -> dict[str, Member]:
    """:func:`_first_definer` of those of ``names`` some index lists."""
    found: dict[str, Member] = {}
    for ar in reversed(search):  # an earlier archive overwrites a later one
        found.update(ar.first_definers(names))
    return found
