"""Bulk string-table decoding shared by the readers."""

from __future__ import annotations

import numpy as np


def read_names(strtab: bytes | memoryview, offsets: np.ndarray) -> list[str]:
    """Decode the NUL-terminated names at ``offsets`` in one pass.

    Raises ValueError naming the first offset that is out of range or whose
    string is not terminated.
    """
    if len(offsets) == 0:
        return []
    raw = bytes(strtab)
    buf = np.frombuffer(raw, dtype=np.uint8)
    offsets = offsets.astype(np.int64)
    bad = offsets >= len(raw)
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"name offset {int(offsets[k])} is past the string table ({len(raw)} bytes)")
    nuls = np.flatnonzero(buf == 0)
    pos = np.searchsorted(nuls, offsets)
    if np.any(pos >= len(nuls)):
        k = int(np.flatnonzero(pos >= len(nuls))[0])
        raise ValueError(f"name at offset {int(offsets[k])} is not NUL-terminated")
    # Decode the table once and pick whole strings out of it: most names
    # start right after a NUL.  Only names that are the tail of a longer
    # string (suffix sharing) are sliced and decoded one by one.
    pieces = raw.decode("utf-8", "surrogateescape").split("\0") if raw.isascii() else None
    starts = np.concatenate(([0], nuls + 1))
    whole = starts[pos] == offsets
    if pieces is not None and np.all(whole):
        return list(map(pieces.__getitem__, pos.tolist()))
    ends = nuls[pos]
    if pieces is None:
        return [raw[s:e].decode("utf-8", "surrogateescape") for s, e in zip(offsets.tolist(), ends.tolist())]
    return [
        pieces[p] if w else raw[s:e].decode("ascii")
        for p, w, s, e in zip(pos.tolist(), whole.tolist(), offsets.tolist(), ends.tolist())
    ]
