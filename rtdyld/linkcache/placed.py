"""A warm batch's objects, placed sections, externals and archive pulls, made when first read.

A warm load publishes a batch without reading its ``objects`` (the pulled
members, known by name), its ``sections`` (which object section lies where),
its ``externals`` (beyond the definitions they resolved to) or its ``pulls``
(why each member was loaded); maps, traces, listings, the debugger interface
and removal do.  Decoding the entry's columns and making the Python object
per member, section, external and pull only then keeps them off the way to
the first call.

An entry's checksums guard against damage, not against content no capture
wrote: whatever of these parts does not decode, or decodes to something
outside the batch, raises :class:`~rtdyld.errors.CorruptCacheEntryError`
naming the entry, when first read (:func:`made_from`).  Each is given the
entry's ``files``: the file it was read from, then any copy stored from it
since (under the inputs' identities), all deleted by such an error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

from ..archives import Pull
from ..errors import CorruptCacheEntryError, LinkError
from ..linked import PlacedSection

# Held while one of these is made, so threads reading a batch at once see
# the same objects (pulls are keyed by the objects' ids).  Re-entrant: making
# a batch's pulls reads its objects.
_making = threading.RLock()


def made_from(files: list[str], what: str, make):
    """``make()``, which decodes ``what`` from the cache entry in ``files``;
    any failure but a LinkError (which names its own culprit) is the entry's,
    raised as a CorruptCacheEntryError (:func:`corrupt`)."""
    try:
        return make()
    except LinkError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the entry holds that no capture wrote
        raise corrupt(files, f"{what}: {type(e).__name__}: {e}") from None


def corrupt(files: list[str], why: str) -> CorruptCacheEntryError:
    """The error for the cache entry in ``files`` holding what no capture
    wrote, which it names by the file it was read from; the files are
    deleted, so the next link of the batch is a miss, linked cold and stored
    again."""
    for f in files:
        try:
            os.unlink(f)
        except OSError:
            pass
    return CorruptCacheEntryError(f"link cache entry {files[0]}: {why}")


class FirstRead(Sequence):
    """A read-only sequence of ``count`` items that ``make()`` gives when
    first read, decoding ``what`` from the cache entry in ``files``; equal to
    the list it stands for."""

    def __init__(self, make, count: int, files: list[str], what: str) -> None:
        self._make = make
        self._count = count
        self._files = files
        self._what = what
        self._made: list | None = None

    def _list(self) -> list:
        if self._made is None:
            with _making:
                if self._made is None:
                    made = made_from(self._files, self._what, self._make)
                    if len(made) != self._count:
                        raise corrupt(self._files, f"{self._what}: {len(made)} where the entry promised {self._count}")
                    self._made = made
        return self._made

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        return self._list()[i]

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self._list())


class WarmExternals(FirstRead):
    """``LinkedBatch.externals`` of a warm batch, made when first read.
    :attr:`outside_definitions` is what publishing needs without them: the
    definitions, outside the process, that they resolved to."""

    def __init__(self, make, count: int, outside_definitions: list, files: list[str]) -> None:
        super().__init__(make, count, files, "externals")
        self.outside_definitions = outside_definitions


def placed_sections(columns, count: int, base: int, files: list[str], segments: list,
                    objects: Sequence) -> FirstRead:
    """``LinkedBatch.sections`` of ``count`` sections, for a batch at ``base``
    with ``segments`` and ``objects``, from the columns (obj, index, segment,
    work) of the cache entry in ``files`` that ``columns()`` gives when first
    needed; each must name a section of one of the objects, placed within
    its segment."""

    def make() -> list[PlacedSection]:
        c = columns()
        obj, index, segment, work = c["obj"], c["index"], c["segment"], c["work"]
        if not len(obj) == len(index) == len(segment) == len(work):
            raise ValueError("placed-section columns of unequal length")
        spans = {s.name: (s.offset, s.offset + s.size) for s in segments}
        for o, i, seg, w in zip(obj, index, segment, work):
            start, end = spans[seg]
            if not (type(w) is int and 0 <= o < len(objects) and 0 <= i < len(objects[o].sections)
                    and start <= w and w + objects[o].sections[i].size <= end):
                raise ValueError(f"section {i!r} of object {o!r} placed at {w!r}, outside its segment {seg!r}")
        return [PlacedSection(o, i, seg, base + w, w) for o, i, seg, w in zip(obj, index, segment, work)]

    return FirstRead(make, count, files, "placed sections")


class WarmPulls(Mapping):
    """``LinkedBatch.pulls`` of a warm batch: ``id(object) -> Pull`` for the
    members at ``objects`` positions, made by ``make()`` when first read.
    :attr:`member_keys` is what publishing needs without them: each member's
    ``ArchiveSet.key``."""

    def __init__(self, make, member_keys: list[tuple[int, int]], files: list[str]) -> None:
        self._make = make
        self.member_keys = member_keys
        self._files = files
        self._made: dict[int, Pull] | None = None

    def _dict(self) -> dict[int, Pull]:
        if self._made is None:
            with _making:
                if self._made is None:
                    self._made = made_from(self._files, "archive pulls", self._make)
        return self._made

    def __getitem__(self, key: int) -> Pull:
        return self._dict()[key]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self.member_keys)
