"""Segments, their layout in one block, and the Allocation life cycle object."""

from __future__ import annotations

import enum
import operator
import threading
from collections import namedtuple

from .errors import MemMgrError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    import numpy as np


class Prot(enum.IntFlag):
    """Page protection; the bits equal the kernel's PROT_READ/WRITE/EXEC."""

    NONE = 0
    R = 1
    W = 2
    X = 4
    RW = 3
    RX = 5


# Requests and segments are immutable records made a few at a time on every
# link: named tuples, because a frozen dataclass's __init__ costs three times
# as much (one object.__setattr__ per field).  collections.namedtuple rather
# than typing.NamedTuple: importing typing costs a repeated ``rtdyld run``
# some 3 ms where nothing else imports it (python -S: 46 ms in all).


class SegmentRequest(namedtuple("SegmentRequest", "name size prot zero_fill", defaults=(False,))):
    """Ask for ``size`` bytes (int) that end up with protection ``prot`` (:class:`Prot`)
    under ``name`` (str).

    ``zero_fill`` (bool) marks memory that starts as zeros and is never
    written by the loader (bss); memmgr itself never writes any segment.
    """

    __slots__ = ()


class Segment(namedtuple("Segment", "name offset size prot zero_fill", defaults=(False,))):
    """A placed segment: ``offset`` from the allocation's base (page aligned),
    requested ``size``, ``prot`` and ``zero_fill`` as in :class:`SegmentRequest`."""

    __slots__ = ()


_tuple_new = tuple.__new__
_W, _X, _RWX, _RW_BITS = int(Prot.W), int(Prot.X), int(Prot.R | Prot.W | Prot.X), int(Prot.RW)


def layout(requests: list[SegmentRequest], page_size: int) -> tuple[list[Segment], int]:
    """Place segments in request order, each on a page boundary; return them and the total size.

    A size-0 segment takes no pages (it shares its offset with the next one).
    Raises MemMgrError for a malformed request or one both writable and
    executable.
    """
    segments = []
    offset = 0
    for req in requests:
        if not isinstance(req, SegmentRequest):
            raise MemMgrError(f"expected a SegmentRequest, got {req!r}")
        name, size, prot, zero_fill = req
        if type(size) is not int:  # numpy sizes are fine, floats are not
            try:
                size = operator.index(size)
            except TypeError:
                size = -1
        if size < 0:
            raise MemMgrError(f"segment {name!r}: bad size {req.size!r}")
        if type(prot) is not Prot:  # converting a member costs more than the rest of the loop
            prot = Prot(prot)
        bits = prot._value_  # tested as a plain int: IntFlag operators cost microseconds each
        if bits & ~_RWX:
            raise MemMgrError(f"segment {name!r}: unknown protection bits {bits:#x}")
        if bits & _W and bits & _X:
            raise MemMgrError(f"segment {name!r}: writable and executable at once is never allowed")
        # tuple.__new__ is what Segment(...) calls, minus a Python-level frame per segment.
        segments.append(_tuple_new(Segment, (name, offset, size, prot, bool(zero_fill))))
        offset += -(-size // page_size) * page_size
    return segments, offset


def seal_runs(segments: list[Segment], page_size: int) -> list[list[int]]:
    """The ``[offset, length, prot]`` page runs that sealing ``segments`` changes, in calling order.

    A run is a maximal stretch of adjacent pages with the same final
    protection.  In flight every page is RW, so runs that stay RW need no
    call; executable runs come last, so code becomes runnable only once its
    data is sealed.  ``prot`` is a plain int, as the kernel takes it.
    """
    plain: list[list[int]] = []
    code: list[list[int]] = []
    last = None  # the run the previous segment with pages belongs to, or None for RW
    end = -1  # where that segment's pages end
    for seg in segments:
        length = -(-seg.size // page_size) * page_size
        if not length:
            continue
        bits = seg.prot._value_
        if bits == _RW_BITS:
            last = None
        elif last is not None and last[2] == bits and end == seg.offset:
            last[1] += length
        else:
            last = [seg.offset, length, bits]
            (code if bits & _X else plain).append(last)
        end = seg.offset + length
    return plain + code


class _Owner:
    """What an allocation asks of the manager that made it (MemoryManager,
    VirtualMemory).  Documentation for the annotations only: a
    typing.Protocol costs every new process a fraction of a millisecond."""

    def _finalize(self, alloc: Allocation, runs: list[list[int]]) -> None: ...

    def _release(self, alloc: Allocation) -> None: ...


_NO_BYTES = memoryview(b"")
IN_FLIGHT = "in-flight"
FINALIZED = "finalized"
RELEASED = "released"


class Allocation:
    """One contiguous, page-aligned block holding several segments.

    Life cycle: ``in-flight`` (every page readable and writable, nothing
    executable) → :meth:`finalize` (each segment gets its final protection) →
    :meth:`release` (memory returned).  Releasing an in-flight allocation
    abandons it.  Made by a memory manager; never construct one directly.

    Thread safe: a per-allocation lock makes each state change atomic, so two
    threads releasing (or finalizing and releasing) at once cannot return the
    range twice or protect pages already handed to someone else.
    """

    def __init__(
        self,
        owner: _Owner,
        target_base: int,
        size: int,
        segments: list[Segment],
        buffer: memoryview,
        page_size: int,
        low: bool,
    ):
        self._owner = owner
        self.target_base = target_base
        self.size = size
        self.segments = segments
        self.page_size = page_size
        self.low = low
        self._buffer = buffer  # the working memory as bytes ('B')
        self._memory: np.ndarray | None = None  # the same as a numpy array, made when first asked for
        self._state = IN_FLIGHT
        self._lock = threading.Lock()
        self._sealed: set[str] = set()
        self._release_hooks: list = []

    @property
    def state(self) -> str:
        """``"in-flight"``, ``"finalized"`` or ``"released"``."""
        return self._state

    @property
    def memory(self) -> np.ndarray:
        """Working memory: uint8 array of ``size`` bytes, byte ``i`` lands at ``target_base + i``.

        Writable while in flight; after finalize a read-only view (read only
        readable segments: reading a page without R faults).  Arrays obtained
        while in flight stay writable numpy objects, but writing through them
        after finalize into a non-writable segment crashes the process.
        Raises MemMgrError once released.
        """
        if self._state == RELEASED:
            raise MemMgrError(f"{self!r} is released; its memory is gone")
        memory = self._array()
        if self._state == FINALIZED:
            view = memory.view()
            view.flags.writeable = False
            return view
        return memory

    def _array(self) -> np.ndarray:
        if self._memory is None:
            # Made on first use: a batch restored from a link cache is written
            # through :attr:`buffer` and never imports numpy.
            import numpy as np

            self._memory = np.frombuffer(self._buffer, dtype=np.uint8)
        return self._memory

    @property
    def buffer(self) -> memoryview:
        """:attr:`memory` as a memoryview of bytes, under the same rules
        (read-only after finalize); for code that needs no numpy."""
        if self._state == RELEASED:
            raise MemMgrError(f"{self!r} is released; its memory is gone")
        if self._state == FINALIZED:
            return self._buffer.toreadonly()
        return self._buffer

    def segment(self, name: str) -> Segment:
        """The first segment called ``name``; KeyError if there is none."""
        for seg in self.segments:
            if seg.name == name:
                return seg
        raise KeyError(name)

    def view(self, segment: Segment | int | str) -> np.ndarray:
        """Working memory of one segment (``size`` bytes, no padding).

        ``segment`` is a Segment of this allocation, its index or its name.
        Writable while in flight, and after finalize exactly when the
        segment's protection has W.  Raises MemMgrError once released.
        """
        if isinstance(segment, int):
            seg = self.segments[segment]
        elif isinstance(segment, str):
            seg = self.segment(segment)
        else:
            seg = segment
        if self._state == RELEASED:
            raise MemMgrError(f"{self!r} is released; its memory is gone")
        view = self._array()[seg.offset : seg.offset + seg.size]
        if (self._state == FINALIZED or seg.name in self._sealed) and Prot.W not in seg.prot:
            view.flags.writeable = False
        return view

    def finalize(self) -> None:
        """Give every segment its final protection; no page is ever writable and executable.

        A second call does nothing.  Raises MemMgrError if the allocation was
        released, or if the kernel refuses (the allocation then stays in flight
        and should be released).
        """
        with self._lock:
            if self._state == RELEASED:
                raise MemMgrError(f"cannot finalize {self!r}: already released")
            if self._state == FINALIZED:
                return
            segments = self.segments
            if self._sealed:
                segments = [s for s in segments if s.name not in self._sealed]
            self._owner._finalize(self, seal_runs(segments, self.page_size))
            self._state = FINALIZED

    def finalize_segments(self, names) -> None:
        """Give the named segments their final protection now; the rest stay in flight.

        For work that must run code of the allocation before its data is
        sealed (an IFUNC resolver whose result goes into data).  Sealed
        segments are no longer writable through the working memory; a later
        :meth:`finalize` seals the others.  No page is ever writable and
        executable.  Raises MemMgrError unless in flight, or for an unknown name.
        """
        with self._lock:
            if self._state != IN_FLIGHT:
                raise MemMgrError(f"cannot finalize segments of {self!r}: not in flight")
            names = set(names)
            unknown = names - {s.name for s in self.segments}
            if unknown:
                raise MemMgrError(f"{self!r} has no segment {min(unknown)!r}")
            picked = [s for s in self.segments if s.name in names and s.name not in self._sealed]
            self._owner._finalize(self, seal_runs(picked, self.page_size))
            self._sealed |= names

    def add_release_hook(self, fn) -> None:
        """Call ``fn()`` once, when the allocation is released (resources tied to its life)."""
        self._release_hooks.append(fn)

    def release(self) -> None:
        """Return the memory (pages read as zero when reused); a second call does nothing."""
        with self._lock:
            if self._state == RELEASED:
                return
            self._owner._release(self)
            self._mark_released()

    def _mark_released(self) -> None:
        self._state = RELEASED
        self._buffer = _NO_BYTES
        self._memory = None
        hooks, self._release_hooks = self._release_hooks, []
        for fn in reversed(hooks):
            fn()

    def __repr__(self) -> str:
        names = ",".join(s.name for s in self.segments)
        return (
            f"<Allocation 0x{self.target_base:x}+{self.size:#x} {self._state}"
            f"{' low' if self.low else ''} [{names}]>"
        )
