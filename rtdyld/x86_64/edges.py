"""x86-64 edge kinds: the relocation vocabulary shared by every reader.

Readers translate their format's relocation types into these kinds (as
JITLink does), so the fixup code never knows ELF from Mach-O.  Formulas use
the psABI's names: S symbol address, A addend, P place, GOT the batch's GOT
base, G a slot's offset within the GOT, L a stub (PLT) address, Z the
symbol's size, S2 the subtrahend of a Mach-O SUBTRACTOR pair.
"""

from __future__ import annotations

from enum import IntEnum

from ..lazy_numpy import np


class Edge(IntEnum):
    NONE = 0
    Pointer64 = 1  # S + A
    Pointer32 = 2  # S + A, zero-extended 32 bits
    Pointer32Signed = 3  # S + A, sign-extended 32 bits
    Pointer16 = 4  # S + A, 16 bits (signed or unsigned)
    Pointer8 = 5  # S + A, 8 bits (signed or unsigned)
    Delta64 = 6  # S + A - P
    Delta32 = 7  # S + A - P
    Delta16 = 8  # S + A - P
    Delta8 = 9  # S + A - P
    Branch32 = 10  # S + A - P, through a stub when S is out of reach
    GOTDelta32 = 11  # GOT + G + A - P
    GOTDelta32Relaxable = 12  # as GOTDelta32; the load may become a lea
    GOTOffset64 = 13  # G + A
    GOTDelta64 = 14  # GOT + G + A - P
    GOTBaseOffset64 = 15  # S + A - GOT
    GOTBaseDelta32 = 16  # GOT + A - P
    GOTBaseDelta64 = 17  # GOT + A - P
    PLTOffset64 = 18  # L + A - GOT
    Size32 = 19  # Z + A
    Size64 = 20  # Z + A
    Difference64 = 21  # S - S2 + A
    Difference32 = 22  # S - S2 + A
    # Thread-local storage.  The batch's TLS pass (rtdyld.tls) replaces S by
    # the entry the kind names before the formula runs, as a stub replaces S
    # for branches: a GOT pair or slot for the GOT kinds, an offset for the
    # others.
    TLSGDDelta32 = 23  # S + A - P, S = GOT pair {module, offset of the symbol}
    TLSLDDelta32 = 24  # S + A - P, S = GOT pair {module, 0}
    GOTTPOffDelta32 = 25  # S + A - P, S = GOT slot holding the symbol's offset from the thread pointer
    TPOffset32 = 26  # S + A, S = the symbol's offset from the thread pointer, sign-extended
    TPOffset64 = 27  # S + A, as TPOffset32
    DTPOffset32 = 28  # S + A, S = the symbol's offset in its module's TLS block
    DTPOffset64 = 29  # S + A, as DTPOffset32


N_EDGES = len(Edge)

# Bytes written by each kind (index = Edge value); WIDTH is the same as an
# int64 array, made when first imported (a warm link needs no numpy).
WIDTHS = (0, 8, 4, 4, 2, 1, 8, 4, 2, 1, 4, 4, 4, 8, 8, 8, 4, 8, 8, 4, 8, 8, 4, 4, 4, 4, 4, 8, 4, 8)
assert len(WIDTHS) == N_EDGES


def __getattr__(name: str):
    if name == "WIDTH":
        width = np.array(WIDTHS, dtype=np.int64)
        width.flags.writeable = False
        globals()["WIDTH"] = width
        return width
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Accepted value ranges per kind, as (low, high) inclusive on the signed view;
# a kind not listed (64-bit fields) accepts anything.
_I32 = (-(1 << 31), (1 << 31) - 1)
FIELD_RANGE = {
    Edge.Pointer32: (0, (1 << 32) - 1),
    Edge.Pointer32Signed: _I32,
    Edge.Pointer16: (-(1 << 15), (1 << 16) - 1),
    Edge.Pointer8: (-(1 << 7), (1 << 8) - 1),
    Edge.Delta32: _I32,
    Edge.Delta16: (-(1 << 15), (1 << 15) - 1),
    Edge.Delta8: (-(1 << 7), (1 << 7) - 1),
    Edge.Branch32: _I32,
    Edge.GOTDelta32: _I32,
    Edge.GOTDelta32Relaxable: _I32,
    Edge.GOTBaseDelta32: _I32,
    Edge.Size32: (0, (1 << 32) - 1),
    Edge.Difference32: (-(1 << 31), (1 << 32) - 1),
    Edge.TLSGDDelta32: _I32,
    Edge.TLSLDDelta32: _I32,
    Edge.GOTTPOffDelta32: _I32,
    Edge.TPOffset32: _I32,
    Edge.DTPOffset32: _I32,
}
# The same as tables indexed by kind, as plain integers.
_I64 = (-(1 << 63), (1 << 63) - 1)
FIELD_LOW = tuple(FIELD_RANGE.get(k, _I64)[0] for k in range(N_EDGES))
FIELD_HIGH = tuple(FIELD_RANGE.get(k, _I64)[1] for k in range(N_EDGES))

# How far a 32-bit displacement is trusted to reach: a margin keeps the
# region's own size and instruction lengths from turning an "in reach"
# verdict into an overflow.
REACH = (1 << 31) - (64 << 20)

# Kinds whose value depends on a GOT slot for the target.
NEEDS_GOT_SLOT = frozenset(
    {Edge.GOTDelta32, Edge.GOTDelta32Relaxable, Edge.GOTOffset64, Edge.GOTDelta64}
)
# Kinds that reach thread-local storage.
TLS_KINDS = frozenset(
    {
        Edge.TLSGDDelta32,
        Edge.TLSLDDelta32,
        Edge.GOTTPOffDelta32,
        Edge.TPOffset32,
        Edge.TPOffset64,
        Edge.DTPOffset32,
        Edge.DTPOffset64,
    }
)
# Kinds whose value is the symbol's size (Z).
SIZE_KINDS = frozenset({Edge.Size32, Edge.Size64})
# Kinds with a subtrahend symbol (S2): Mach-O SUBTRACTOR pairs.
DIFFERENCE_KINDS = frozenset({Edge.Difference64, Edge.Difference32})
# Kinds that store an absolute 32-bit address: code using them must live low.
ABSOLUTE_32 = frozenset({Edge.Pointer32, Edge.Pointer32Signed})


def kind_mask(kinds) -> np.ndarray:
    """A table indexed by edge kind: ``kind_mask(S)[kind]`` is ``np.isin(kind, S)``
    in one gather (np.isin costs ~100 us per call, whatever the size)."""
    mask = np.zeros(N_EDGES, dtype=bool)
    mask[[int(k) for k in kinds]] = True
    return mask
