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
    ends = nuls[pos]
    return [raw[s:e].decode("utf-8", "surrogateescape") for s, e in zip(offsets.tolist(), ends.tolist())]
