"""A warm batch's placed sections, made when first read.

A warm load publishes a batch without reading its ``sections`` (which object
section lies where); maps, traces, listings and the debugger interface do.
Making the :class:`~rtdyld.batch.PlacedSection` records only then saves a
Python object per section on the way to the first call.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..batch import PlacedSection


class PlacedSections(Sequence):
    """``LinkedBatch.sections`` from an entry's columns, for a batch at ``base``;
    a read-only sequence equal to the list a cold link makes."""

    def __init__(self, obj: list[int], index: list[int], segment: list[str], work: list[int], base: int) -> None:
        if not len(obj) == len(index) == len(segment) == len(work):
            raise ValueError("placed-section columns of unequal length")
        self._columns = (obj, index, segment, work)
        self._base = base
        self._made: list[PlacedSection] | None = None

    def _list(self) -> list[PlacedSection]:
        if self._made is None:
            base = self._base
            self._made = [PlacedSection(o, i, seg, base + w, w) for o, i, seg, w in zip(*self._columns)]
        return self._made

    def __len__(self) -> int:
        return len(self._columns[0])

    def __getitem__(self, i):
        return self._list()[i]

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(self._list())
