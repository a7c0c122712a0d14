"""A warm batch's placed sections, made when first read.

A warm load publishes a batch without reading its ``sections`` (which object
section lies where); maps, traces, listings and the debugger interface do.
Decoding the entry's columns and making the :class:`~rtdyld.batch.PlacedSection`
records only then saves a Python object per section on the way to the first call.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..batch import PlacedSection


class PlacedSections(Sequence):
    """``LinkedBatch.sections`` of ``count`` sections, for a batch at ``base``,
    from the entry's columns (obj, index, segment, work) that ``columns()``
    gives when first needed; a read-only sequence equal to the list a cold
    link makes."""

    def __init__(self, columns, count: int, base: int) -> None:
        self._columns = columns
        self._count = count
        self._base = base
        self._made: list[PlacedSection] | None = None

    def _list(self) -> list[PlacedSection]:
        if self._made is None:
            c = self._columns()
            obj, index, segment, work = c["obj"], c["index"], c["segment"], c["work"]
            if not len(obj) == len(index) == len(segment) == len(work) == self._count:
                raise ValueError("placed-section columns of unequal length")
            base = self._base
            self._made = [PlacedSection(o, i, seg, base + w, w) for o, i, seg, w in zip(obj, index, segment, work)]
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
