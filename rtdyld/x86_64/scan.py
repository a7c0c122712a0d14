"""Decide, before layout, which targets need a GOT slot or a stub.

mold's shape: scan first, apply later.  A target is *in reach* when every
byte of the region the batch will be placed in is within a signed 32-bit
displacement of it; internal targets always are (one batch is one
allocation).  Branches to targets out of reach go through a stub; GOT loads
of targets in reach are relaxed to ``lea`` (and ``call``/``jmp *GOT`` to direct
ones), as JITLink and lld do, so such targets need no slot.
"""

from __future__ import annotations

import numpy as np

from .edges import ABSOLUTE_32, NEEDS_GOT_SLOT, REACH, Edge, kind_mask

# Opcode bytes (at offset-2, offset-1 of the displacement) we can relax.
MOV_LOAD, LEA = 0x8B, 0x8D
RELAX_NONE, RELAX_MOV, RELAX_CALL, RELAX_JMP = 0, 1, 2, 3
_ABSOLUTE_32 = kind_mask(ABSOLUTE_32)
_NEEDS_GOT_SLOT = kind_mask(NEEDS_GOT_SLOT)
# Plain ints: numpy probes an enum operand's attributes on every comparison.
_BRANCH32 = int(Edge.Branch32)


class ScanResult:
    # A plain class: a dataclass decoration execs generated code at import (start-up).
    def __init__(self, got_targets: np.ndarray, stub_targets: np.ndarray, use_stub: np.ndarray,
                 relax: np.ndarray) -> None:
        self.got_targets = got_targets  # unique canonical target ids that get a GOT slot
        self.stub_targets = stub_targets  # unique canonical target ids that get a stub
        self.use_stub = use_stub  # bool per relocation: S is the target's stub
        self.relax = relax  # RELAX_* per relocation


def needs_low_memory(kind: np.ndarray, internal_target: np.ndarray) -> np.ndarray:
    """Relocations that store an absolute 32-bit address of the batch's own code or data."""
    return _ABSOLUTE_32[kind] & internal_target


def in_reach(addresses: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Which of ``addresses`` every byte of [lo, hi) can reach with a rel32."""
    # |a - lo| < REACH and |a - hi| < REACH, as one interval.  User-space
    # addresses are below 2^47, so the int64 view and the bounds cannot wrap.
    a = addresses.astype(np.uint64, copy=False).view(np.int64)
    return (a > max(lo, hi) - REACH) & (a < min(lo, hi) + REACH)


def all_in_reach(addresses: list[int], lo: int, hi: int) -> bool:
    """Whether every one of ``addresses`` is :func:`in_reach`: plain integers,
    a batch having a handful of outside targets (no numpy calls for them)."""
    low, high = max(lo, hi) - REACH, min(lo, hi) + REACH
    return all(low < a < high for a in addresses)


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` without its first-call import of numpy.ma (start-up time)."""
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))] if len(s) else s


def scan(
    kind: np.ndarray,
    target: np.ndarray,
    reachable: np.ndarray | None,
    relaxable: np.ndarray | None,
    opcode: np.ndarray | None,
    modrm: np.ndarray | None,
    branch_like: np.ndarray | None,
    slot_kinds: bool,
) -> ScanResult:
    """Classify relocations.

    ``target`` is each relocation's canonical target id, ``reachable`` says
    per relocation whether that target is in reach (None: every target is),
    ``relaxable`` marks the GOTDelta32Relaxable relocations (None if there
    are none), ``opcode``/``modrm`` are the two bytes before the fixup (0
    where not applicable; None with ``relaxable``),
    ``branch_like`` marks Delta32 fixups that are the operand of a call/jmp
    (which a stub can serve as well as a PLT entry would; read only where a
    target is out of reach), ``slot_kinds`` whether the batch has a
    relocation of a kind that needs a GOT slot.
    """
    n = len(kind)
    relax = np.zeros(n, dtype=np.uint8)
    # Each class is worked out only if the batch has one.
    if relaxable is not None:
        rip = (modrm & 0xC7) == 0x05
        can = relaxable & rip if reachable is None else relaxable & reachable & rip
        relax[can & (opcode == MOV_LOAD)] = RELAX_MOV
        relax[can & (opcode == 0xFF) & (modrm == 0x15)] = RELAX_CALL
        relax[can & (opcode == 0xFF) & (modrm == 0x25)] = RELAX_JMP
    needs_slot = None
    if slot_kinds:
        needs_slot = _NEEDS_GOT_SLOT[kind]
        if relaxable is not None:
            needs_slot &= relax == RELAX_NONE
        if not np.count_nonzero(needs_slot):
            needs_slot = None
    stubs = 0
    if reachable is not None and np.count_nonzero(reachable) < n:
        use_stub = ((kind == _BRANCH32) | branch_like) & ~reachable
        stubs = np.count_nonzero(use_stub)
    else:
        use_stub = np.zeros(n, dtype=bool)
    if needs_slot is not None or stubs:
        slotted = [target[needs_slot]] if needs_slot is not None else []
        got_targets = sorted_unique(np.concatenate([*slotted, target[use_stub]]))
        stub_targets = sorted_unique(target[use_stub])
    else:
        got_targets = stub_targets = np.zeros(0, dtype=target.dtype)
    return ScanResult(got_targets=got_targets, stub_targets=stub_targets, use_stub=use_stub, relax=relax)
