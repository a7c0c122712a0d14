"""Run a batch's initializers and finalizers in the order the C runtime would.

Init arrays run by ascending priority (unprioritised last), each array
forwards; legacy ``.ctors`` arrays run backwards.  Finalizers mirror that:
descending priority (unprioritised first), ``.fini_array`` backwards,
legacy ``.dtors`` forwards.
"""

from __future__ import annotations

from .host import ffi

_SENTINELS = (0, 0xFFFFFFFFFFFFFFFF)


def _pointers(memory, work: int, count: int) -> list[int]:
    # Native 64-bit words are the little-endian pointers the arrays hold (x86-64).
    return [p for p in memoryview(memory)[work : work + 8 * count].cast("Q").tolist() if p not in _SENTINELS]


def initializer_order(memory, entries: list[tuple]) -> list[int]:
    out: list[int] = []
    for _prio, _order, work, count, reverse, _dtors in entries:
        ptrs = _pointers(memory, work, count)
        out.extend(reversed(ptrs) if reverse else ptrs)
    return out


def finalizer_order(memory, entries: list[tuple]) -> list[int]:
    out: list[int] = []
    for _prio, _order, work, count, _reverse, dtors in reversed(entries):
        ptrs = _pointers(memory, work, count)
        out.extend(ptrs if dtors else reversed(ptrs))
    return out


def call_all(addresses: list[int]) -> None:
    for a in addresses:
        ffi.cast("void (*)(void)", a)()
