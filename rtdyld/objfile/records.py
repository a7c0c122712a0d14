"""Record-array helpers shared by the readers and the batch linker."""

from __future__ import annotations

import numpy as np


def join(tables: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The tables end to end.  ``np.concatenate`` re-derives a record dtype
    on every call, which costs more than the copy for the small tables of
    archive members."""
    if len(tables) == 1:
        return tables[0]
    if all(t.dtype == dtype and t.flags.c_contiguous for t in tables):
        # Record assignment checks the fields table by table; the bytes end
        # to end are the same rows, copied at C speed (~2 us for a dozen tables, not ~40).
        return np.frombuffer(bytearray().join(tables), dtype=dtype)
    out = np.empty(sum(len(t) for t in tables), dtype=dtype)
    at = 0
    for t in tables:
        out[at : at + len(t)] = t
        at += len(t)
    return out
