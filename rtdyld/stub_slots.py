"""Calls through the GOT to a stubbed name go straight through the stub's slot.

``call *name@GOTPCREL(%rip)`` (code built with ``-fno-plt``, the large code
model, or LLVM's ``nonlazybind``) would normally load the stub's address
from a GOT slot of the batch and then jump through the stub's own slot: two
indirect branches.  The stub's slot holds exactly what such a call wants,
the current implementation, so the instruction can use it as its GOT entry:
one indirect call, and a hot swap still takes effect at the next call.

Only ``call``/``jmp *disp32(%rip)`` (ff 15 / ff 25) are bound, and only with
the addend -4 that points the displacement at the slot itself: they jump
through the value and never keep it.  A load (``mov name@GOTPCREL(%rip)``)
keeps the stub's address, which is the function's published address, so
pointer identity and later hot swaps still hold.  The slot must be in reach
of every byte of the batch, as any GOT would.
"""

from __future__ import annotations

import threading

import numpy as np

from .x86_64 import scan as scan_mod
from .x86_64.edges import Edge

_slots: dict[int, int] = {}  # stub address -> slot address, every live stub of the process
_lock = threading.Lock()
_INDIRECT = 0xFF
_CALL_RIP, _JMP_RIP = 0x15, 0x25


def register(stub: int, slot: int) -> None:
    with _lock:
        _slots[stub] = slot


def unregister(stub: int) -> None:
    with _lock:
        _slots.pop(stub, None)


def plan(batch, scanned: scan_mod.ScanResult) -> tuple[scan_mod.ScanResult, np.ndarray | None]:
    """Take the GOT calls of stubbed externals off the batch's GOT; returns
    the new scan and, per relocation, the slot it binds to (0: not bound)."""
    if not _slots or not len(batch.relocs):
        return scanned, None
    n = batch.nsyms
    with _lock:
        ext_slot = np.array([_slots.get(e.address, 0) for e in batch.externals] or [0], dtype=np.uint64)
    if not np.any(ext_slot):
        return scanned, None
    kind, tgt = batch.relocs["kind"], batch.target
    got_pc = ((kind == Edge.GOTDelta32) | (kind == Edge.GOTDelta32Relaxable)) & (tgt >= n)
    got_pc &= batch.relocs["addend"] == -4
    if not np.any(got_pc):
        return scanned, None
    slot = np.zeros(len(kind), dtype=np.uint64)
    slot[got_pc] = ext_slot[tgt[got_pc] - n]
    lo, hi = batch.reach
    cand = got_pc & (slot != 0)
    cand[cand] = scan_mod.in_reach(slot[cand], lo, hi)
    if np.any(cand):
        opcode, modrm = batch._opcode_bytes(cand)  # the bytes 2 and 1 before each
        cand[cand] = (opcode == _INDIRECT) & ((modrm == _CALL_RIP) | (modrm == _JMP_RIP))
    if not np.any(cand):
        return scanned, None
    slot[~cand] = 0
    relax = scanned.relax.copy()
    relax[cand] = scan_mod.RELAX_NONE
    # A target keeps its GOT slot if any other relocation refers to it (a load, a TLS pass's entry).
    unused = np.setdiff1d(tgt[cand], tgt[~cand])
    got_targets = scanned.got_targets[~np.isin(scanned.got_targets, unused)]
    out = scan_mod.ScanResult(got_targets=got_targets, stub_targets=scanned.stub_targets,
                              use_stub=scanned.use_stub, relax=relax)
    return out, slot


def bind(batch, kind: np.ndarray, S: np.ndarray) -> None:
    """In the fixup phase: a bound call is PC-relative to the stub's slot."""
    slot = batch.stub_slots  # set by ``plan`` in the scan phase
    if slot is None:
        return
    bound = slot != 0
    S[bound] = slot[bound]
    kind[bound] = Edge.Delta32
