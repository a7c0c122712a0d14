"""Compute, range-check and write relocation values, one edge kind at a time.

All arithmetic is on uint64 arrays, wrapping like the hardware; a value is
interpreted as signed only for range checks.  Nothing is written until every
value of the batch has passed its check, so an overflow leaves the working
memory untouched.
"""

from __future__ import annotations

from itertools import compress

import numpy as np

from .edges import FIELD_HIGH, FIELD_LOW, N_EDGES, WIDTH, Edge

U = np.uint64

# Kinds grouped by formula, and the formula of each kind as a table indexed by kind.
_POINTER, _DELTA, _GOT_DELTA, _GOT_OFFSET, _GOT_BASE_OFFSET, _GOT_BASE_DELTA, _SIZE, _DIFFERENCE, _UNHANDLED = range(9)
_FORMULA_KINDS = {
    _POINTER: (Edge.Pointer64, Edge.Pointer32, Edge.Pointer32Signed, Edge.Pointer16, Edge.Pointer8,
               Edge.TPOffset32, Edge.TPOffset64, Edge.DTPOffset32, Edge.DTPOffset64),
    _DELTA: (Edge.Delta64, Edge.Delta32, Edge.Delta16, Edge.Delta8, Edge.Branch32,
             Edge.TLSGDDelta32, Edge.TLSLDDelta32, Edge.GOTTPOffDelta32),
    _GOT_DELTA: (Edge.GOTDelta32, Edge.GOTDelta32Relaxable, Edge.GOTDelta64),
    _GOT_OFFSET: (Edge.GOTOffset64,),
    _GOT_BASE_OFFSET: (Edge.GOTBaseOffset64, Edge.PLTOffset64),
    _GOT_BASE_DELTA: (Edge.GOTBaseDelta32, Edge.GOTBaseDelta64),
    _SIZE: (Edge.Size32, Edge.Size64),
    _DIFFERENCE: (Edge.Difference64, Edge.Difference32),
}  # fmt: skip
_FORMULA = np.full(N_EDGES, _UNHANDLED, dtype=np.intp)
for _f, _kinds in _FORMULA_KINDS.items():
    _FORMULA[[int(k) for k in _kinds]] = _f
_FORMULA_OF = _FORMULA.tolist()
# Accepted value ranges per kind (rtdyld.x86_64.edges.FIELD_RANGE; kinds
# without a range, 64-bit fields, accept anything) as arrays, public for the
# link cache's own checks of replayed values; for the check here, the low
# end's bits and the span above it.
LOW = np.array(FIELD_LOW, dtype=np.int64)
HIGH = np.array(FIELD_HIGH, dtype=np.int64)
_SPAN = (HIGH - LOW).view(U)  # wraps to 2**64 - 1 for the 64-bit kinds, as meant
_LOW_BITS = LOW.view(U)


def compute(kind, S, A, P, GOT, G, Z, S2, census: list[int] | None = None) -> np.ndarray:
    """The value of every relocation, by the psABI formula of its kind.

    ``S`` is already the stub address where a stub is used, ``G`` the GOT
    slot's offset (meaningful only for GOT kinds), ``GOT`` a scalar.
    ``census`` is how many rows there are of each kind, if the caller
    knows (a kind counted but absent costs a pass, no more); else counted.
    """
    A = A.view(U) if A.dtype == np.int64 else A.astype(np.int64).view(U)  # a 64-bit column: no copy
    GOT = U(GOT)
    # S + A for every row (the pointer formula), then each other formula
    # present fixes its rows: most batches have only pointers and deltas.
    v = S + A
    formula = None
    for f in _formulas(kind, census):
        if f == _POINTER:
            continue
        if formula is None:
            formula = _FORMULA.take(kind)
        m = formula == f
        if f == _DELTA:
            np.subtract(v, P, out=v, where=m)
            continue
        s, a, p = S[m], A[m], P[m]
        if f == _GOT_DELTA:
            v[m] = GOT + G[m] + a - p
        elif f == _GOT_OFFSET:
            v[m] = G[m] + a
        elif f == _GOT_BASE_OFFSET:
            v[m] = s + a - GOT  # L = S for PLTOffset64: the 64-bit call reaches anything
        elif f == _GOT_BASE_DELTA:
            v[m] = GOT + a - p
        elif f == _SIZE:
            v[m] = Z[m] + a
        elif f == _DIFFERENCE:
            v[m] = s - S2[m] + a
        else:
            raise AssertionError(f"unhandled edge kind {Edge(int(kind[m][0]))!r}")
    return v


def _present(kind: np.ndarray, census: list[int] | None) -> list[int]:
    """The kinds ``kind`` holds, from ``census`` when given (a plain list
    of counts: no numpy call, and picked at C speed, however long)."""
    if census is None:
        census = np.bincount(kind, minlength=N_EDGES).tolist()
    return list(compress(range(len(census)), census))


def _formulas(kind: np.ndarray, census: list[int] | None) -> list[int]:
    """The formulas of the kinds ``kind`` holds, each once, in order."""
    # (A kind past the table has no formula: the look-up fails, as indexing by it would.)
    return sorted({_FORMULA_OF[k] for k in _present(kind, census)})


def out_of_range(kind: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of relocations whose value does not fit the field."""
    # low <= v <= high, on the signed view, is (v - low) mod 2**64 <= high - low:
    # one comparison, and no signed copy.
    return (value.view(U) - _LOW_BITS.take(kind)) > _SPAN.take(kind)


# Per field width: the little-endian integer type.
_FIELD = {w: np.dtype(f"<u{w}") for w in (1, 2, 4, 8)}
_WIDTH_OF = WIDTH.tolist()


def write(memory: np.ndarray, where: np.ndarray, kind: np.ndarray, value: np.ndarray,
          census: list[int] | None = None) -> None:
    """Store each value little-endian in WIDTH[kind] bytes at ``where``
    (``census`` as for :func:`compute`)."""
    widths = sorted({_WIDTH_OF[k] for k in _present(kind, census)} - {0})
    width = WIDTH.take(kind) if len(widths) > 1 else None
    for i, w in enumerate(widths):
        if not i:
            # The narrowest width present, stored for every row: no selection
            # (a wider field's low bytes, which its own store rewrites after).
            at, v = where, value
        else:
            m = width == w
            at, v = where[m], value[m]
        # Every field of this width in one store: a view of ``memory`` whose
        # i-th element is the w bytes at i (overlapping, unaligned as a field
        # may be); the narrowing cast keeps each value's low bytes.
        fields = np.ndarray((max(len(memory) - w + 1, 0),), dtype=_FIELD[w], buffer=memory, strides=(1,))
        fields[at] = v
