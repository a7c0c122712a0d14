"""A batch's residual fixups written with plain integers, from rows listed in its entry.

An entry with at most :data:`FEW_LISTED` residual fixups lists them in its
metadata (:func:`rtdyld.linkcache.image.listed`); a warm load writes them
here, through a memoryview of the batch's memory, with no numpy call: each
costs 10-40 µs in a new process, while caches are cold, against ~0.1 µs a
row, and a warm link of such a batch then never imports numpy at all.
:func:`rtdyld.linkcache.image.apply_grouped` is the same computation for
entries with more rows.
"""

from __future__ import annotations

import struct

from ..x86_64.edges import FIELD_HIGH, FIELD_LOW, WIDTHS

_M64 = (1 << 64) - 1
# Per kind: whether any 64-bit value fits its field (then it is never checked).
_UNCHECKED = [lo == -(1 << 63) and hi == _M64 >> 1 for lo, hi in zip(FIELD_LOW, FIELD_HIGH)]
# The kinds a residual fixup may have.  A stored group must be one grouped()
# makes: such a kind, cb in -1..1, an external within the table or -1 (a
# negative index would pick another external from the end), a count >= 0.
_WRITTEN = [w in (1, 2, 4, 8) for w in WIDTHS]
_NKINDS = len(_WRITTEN)
_PACK = {1: struct.Struct("<B").pack_into, 2: struct.Struct("<H").pack_into, 4: struct.Struct("<I").pack_into,
         8: struct.Struct("<Q").pack_into}
# Per written kind: how its field is written, and the mask of its bits.
_WRITE = [(_PACK[w], (1 << 8 * w) - 1) if ok else None for w, ok in zip(WIDTHS, _WRITTEN)]


# Up to this many residual fixups an entry lists them in its metadata: a warm
# load in a new process then writes them with plain integers, with no numpy
# call (each costs 10-40 µs there, while caches are cold; a row ~0.1 µs).
FEW_LISTED = 1024


def group_shift(group: list, base: int, ext: list) -> tuple[int, bool]:
    """What every row of a residual group ``[kind, cb, j, count, min const,
    max const]`` moves by, ``cb * base + ext[j]``, and whether its extreme
    constants, moved, show that every row fits its field without wrapping
    around 2**64 (if not, the caller checks the rows one by one).  Raises
    ValueError for a group no capture makes."""
    kind, cb, j, count, cmin, cmax = group
    if not (0 <= kind < _NKINDS and _WRITTEN[kind] and -1 <= cb <= 1 and -1 <= j < len(ext) and count >= 0):
        raise ValueError(f"a residual group {[kind, cb, j, count]} that no capture makes")
    d = cb * base + (ext[j] if j >= 0 else 0)
    return d, _UNCHECKED[kind] or (FIELD_LOW[kind] <= cmin + d and cmax + d <= FIELD_HIGH[kind])


def apply_listed(rows: bytes, groups: list, mem, base: int, ext, limit: int | None = None) -> bool:
    """:func:`~rtdyld.linkcache.image.apply_grouped` for rows
    :func:`~rtdyld.linkcache.image.listed` gives, with the externals'
    addresses ``ext`` as a list or an array: the same values, range checks,
    bytes and errors, with Python integers."""
    # Native int64 is the little-endian layout listed() wrote (x86-64 only);
    # a length that is not whole rows raises TypeError (a corrupt entry).
    both = memoryview(rows).cast("q")
    n = len(both) // 2
    # As lists: min, max, slices and iteration over a memoryview cost twice as much.
    where, const = both[:n].tolist(), both[n:].tolist()
    ext_ = ext if isinstance(ext, list) else ext.tolist()  # a list, or a numpy array
    # Group by group, as apply_grouped checks them: a group whose rows do not
    # fit answers False before a later group is looked at.
    deltas = []
    at = 0
    for group in groups:
        d, fits = group_shift(group, base, ext_)
        kind, count = group[0], group[3]
        if not fits:
            lo, hi = FIELD_LOW[kind], FIELD_HIGH[kind]
            for c in const[at : at + count]:
                v = (c + d) & _M64
                if not lo <= (v - (1 << 64) if v >> 63 else v) <= hi:
                    return False
        deltas.append(d)
        at += count
    if at != len(where) or len(const) != len(where):
        raise ValueError("residual groups do not cover the rows")
    # pack_into counts a negative offset from the end: every position checked
    # before any is written, field by field only near the end.
    end = len(mem) if limit is None else min(limit, len(mem))
    if n and (min(where) < 0 or max(where) + 8 > end):
        at = 0
        for kind, _cb, _j, count, _lo, _hi in groups:
            if count and (min(where[at : at + count]) < 0 or max(where[at : at + count]) + WIDTHS[kind] > end):
                raise ValueError("a residual fixup outside the batch's image")
            at += count
    view = memoryview(mem)
    at = 0
    for (kind, _cb, _j, count, _lo, _hi), d in zip(groups, deltas):
        put, mask = _WRITE[kind]
        for w_at, c in zip(where[at : at + count], const[at : at + count]):
            put(view, w_at, (c + d) & mask)
        at += count
    return True
