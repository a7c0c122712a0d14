"""The symbol and relocation tables' columns: numpy structured dtypes.

Kept apart from :mod:`.model` so that what needs only the model (a warm link
from the link cache) does not import numpy."""

from __future__ import annotations

import numpy as np

# --- symbols -----------------------------------------------------------------

SYM_DTYPE = np.dtype(
    [
        ("value", "<u8"),  # offset within ``section``; see SEC_* for the others
        ("size", "<u8"),
        ("section", "<i4"),  # index into ObjectFile.sections, or SEC_*
        ("bind", "u1"),
        ("type", "u1"),
        ("vis", "u1"),
    ]
)

# --- relocations ---------------------------------------------------------------

RELOC_DTYPE = np.dtype(
    [
        ("section", "<i4"),  # the section being patched (index into sections)
        ("offset", "<u8"),  # where in that section
        ("kind", "u1"),  # rtdyld.x86_64.edges.Edge
        ("rtype", "<u4"),  # the type as the object wrote it, for traces
        ("sym", "<i4"),  # target symbol (index into the symbol table)
        ("sym2", "<i4"),  # subtrahend symbol for Difference kinds, else -1
        ("addend", "<i8"),  # format quirks (PLT32 -4, SIGNED_N, ...) already applied
    ]
)


# A batch's relocations (rtdyld.batch): an object's, plus which object and its own symbol number.
BATCH_RELOC_DTYPE = np.dtype(RELOC_DTYPE.descr + [("obj", "<i4"), ("lsym", "<i4")])


def empty_relocs(n: int = 0) -> np.ndarray:
    r = np.zeros(n, dtype=RELOC_DTYPE)
    r["sym2"] = -1
    return r
