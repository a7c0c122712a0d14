"""A finalized batch as a relocatable image: capture after a cold link, restore in a new process.

A batch is one allocation, so its segments keep their distances wherever it
lands: every fixup whose value depends only on addresses inside the batch
and on the distances between them (PC-relative calls and loads within the
batch, GOT-relative forms, stubs, sizes) is final once written and stays in
the image.  What remains are *residual* fixups: values that move with the
batch's base (absolute pointers to its own code and data) or with an
external symbol (host functions, earlier batches, user definitions).  They
are found without knowing any formula: every fixup is computed a second time
with the batch shifted and each external moved by its own distinct amount,
and those whose value changed are residual.  At load they are computed
again, vectorised, with the new base and external addresses by the same
:func:`rtdyld.x86_64.fixup.compute`, range-checked, and written; GOT slots
likewise.  Anything the capture cannot classify with certainty makes the
batch uncacheable (:class:`Uncacheable`), never approximately cached.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..batch import GOT_SYMBOL, LinkedBatch
from ..objfile.model import SEC_ABS
from ..x86_64 import fixup
from ..x86_64.edges import Edge
from .tables import Uncacheable

U = np.uint64
REL, ABS, EXT = 0, 1, 2  # how an address moves: with the batch, never, with external j
_SIZE = (int(Edge.Size32), int(Edge.Size64))
_DIFFERENCE = (int(Edge.Difference32), int(Edge.Difference64))
_SHIFT = 0x1_0000_0000  # the batch's trial move; external j moves by (j + 2) times this


@dataclasses.dataclass
class Residual:
    """Fixups and GOT slots to recompute at load, as arrays."""

    where: np.ndarray
    kind: np.ndarray
    A: np.ndarray
    P: np.ndarray  # offset from the base
    G: np.ndarray
    Z: np.ndarray
    s_class: np.ndarray
    s_value: np.ndarray  # offset from the base (REL), address (ABS), external index (EXT)
    s2: np.ndarray  # offset from the base of S2 (Difference kinds), else 0
    got_where: np.ndarray
    got_class: np.ndarray
    got_value: np.ndarray


def external_roles(lb: LinkedBatch) -> list[str]:
    """Per external: ``resolved`` (a definition outside the batch), ``got``
    (the batch's own GOT symbol) or ``none`` (a weak reference left at 0)."""
    out = []
    for e in lb.externals:
        if e.definition is not None:
            out.append("resolved")
        elif e.name == GOT_SYMBOL and e.address == lb.got_base:
            out.append("got")
        elif e.address == 0:
            out.append("none")
        else:
            raise Uncacheable(f"external {e.name!r} of unknown kind")
    return out


def _symbol_is_abs(lb: LinkedBatch, targets: np.ndarray) -> np.ndarray:
    counts = [len(o.symbols) for o in lb.objects]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    out = np.zeros(len(targets), dtype=bool)
    oi = np.searchsorted(starts, targets, side="right") - 1
    for o in np.unique(oi).tolist():
        m = oi == o
        sec = lb.objects[o].symbols["section"][targets[m] - starts[o]]
        out[m] = sec == SEC_ABS
    return out


def _classify(lb: LinkedBatch, targets: np.ndarray, addresses: np.ndarray, nsyms: int, roles: list[str],
              via_stub: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class and stored value of the address each target resolved to."""
    base = lb.allocation.target_base
    n = len(targets)
    cls = np.full(n, REL, dtype=np.uint8)
    val = (addresses - U(base)).view(np.int64).copy()
    stub = via_stub if via_stub is not None else np.zeros(n, dtype=bool)
    ext = (targets >= nsyms) & ~stub
    if np.any(ext):
        j = targets[ext] - nsyms
        role = np.array(roles, dtype=object)[j]
        moving = role == "resolved"
        fixed = role == "none"
        idx = np.flatnonzero(ext)
        cls[idx[moving]] = EXT
        val[idx[moving]] = j[moving]
        cls[idx[fixed]] = ABS
        val[idx[fixed]] = addresses[idx[fixed]].view(np.int64)
    internal = (targets < nsyms) & ~stub
    if np.any(internal):
        idx = np.flatnonzero(internal)
        absolute = _symbol_is_abs(lb, targets[idx])
        cls[idx[absolute]] = ABS
        val[idx[absolute]] = addresses[idx[absolute]].view(np.int64)
    rel = cls == REL
    if np.any(rel & ((val < 0) | (val > lb.allocation.size))):
        raise Uncacheable("an address taken as the batch's own lies outside it")
    return cls, val


def _addresses(cls, val, base: int, ext: np.ndarray) -> np.ndarray:
    out = val.view(U).copy()
    rel = cls == REL
    out[rel] += U(base)
    e = cls == EXT
    if np.any(e):
        out[e] = ext[val[e]]
    return out


def _trial_externals(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.uint64) + U(2)) * U(_SHIFT)


def capture(lb: LinkedBatch, roles: list[str]) -> Residual:
    """The residual fixups of a freshly linked (not yet finalized) batch."""
    base = lb.allocation.target_base
    nsyms = sum(len(o.symbols) for o in lb.objects)
    mem = lb.allocation.memory
    t = lb.tables
    if t:
        try:
            kind, target, where = t["kind"], t["target"], t["where"]
            P, S, G, value, use_stub = t["P"], t["S"], t["G"], t["value"], t["use_stub"]
            A = t["relocs"]["addend"]
        except (KeyError, ValueError) as e:
            raise Uncacheable(f"the batch's fixup tables lack {e}") from None
        s_class, s_value = _classify(lb, target, S, nsyms, roles, use_stub)
        Z = np.zeros(len(kind), dtype=U)
        size = np.isin(kind, _SIZE)
        Z[size] = value[size] - A[size].view(U)
        s2 = np.zeros(len(kind), dtype=np.int64)
        diff = np.isin(kind, _DIFFERENCE)
        if np.any(diff):
            S2 = S[diff] + A[diff].view(U) - value[diff]
            s2[diff] = (S2 - U(base)).view(np.int64)
            if np.any((s2[diff] < 0) | (s2[diff] > lb.allocation.size)):
                raise Uncacheable("a difference against a symbol outside the batch")
        P_off = (P - U(base)).view(np.int64)
        got_off = lb.got_base - base
        moved = _residual_values(kind, s_class, s_value, A, P_off, G, Z, s2, got_off, base + _SHIFT,
                                 _trial_externals(len(lb.externals)))
        residual = moved != value
        here = np.array([e.address for e in lb.externals] or [0], dtype=U)
        if not np.array_equal(_residual_values(kind, s_class, s_value, A, P_off, G, Z, s2, got_off, base, here),
                              value):
            raise Uncacheable("the fixups cannot be recomputed from the batch's tables")
        sel = np.flatnonzero(residual)
        res = {"where": where[sel].astype(np.int64), "kind": kind[sel].astype(np.uint8),
               "A": A[sel].astype(np.int64), "P": P_off[sel], "G": G[sel].astype(U), "Z": Z[sel],
               "s_class": s_class[sel], "s_value": s_value[sel], "s2": s2[sel]}
    else:
        res = {"where": np.zeros(0, np.int64), "kind": np.zeros(0, np.uint8), "A": np.zeros(0, np.int64),
               "P": np.zeros(0, np.int64), "G": np.zeros(0, U), "Z": np.zeros(0, U),
               "s_class": np.zeros(0, np.uint8), "s_value": np.zeros(0, np.int64), "s2": np.zeros(0, np.int64)}
    got_t = np.array(sorted(lb.got, key=lb.got.get), dtype=np.int64)
    got_where = np.array([lb.got[x] - base for x in got_t.tolist()], dtype=np.int64)
    got_addr = np.zeros(len(got_t), dtype=U)
    for i, w in enumerate(got_where.tolist()):
        got_addr[i] = mem[w : w + 8].view("<u8")[0]
    got_class, got_value = _classify(lb, got_t, got_addr, nsyms, roles)
    return Residual(**res, got_where=got_where, got_class=got_class, got_value=got_value)


def _residual_values(kind, s_class, s_value, A, P_off, G, Z, s2, got_off: int, base: int,
                     ext: np.ndarray) -> np.ndarray:
    S = _addresses(s_class, s_value, base, ext)
    P = P_off.view(U) + U(base)
    S2 = s2.view(U) + U(base)
    return fixup.compute(kind, S, A, P, base + got_off, G, Z, S2)


def apply(res: Residual, mem: np.ndarray, base: int, got_off: int, ext: np.ndarray) -> bool:
    """Write the residual fixups and GOT slots for a batch at ``base`` whose
    externals are at ``ext``; False (nothing written) if a value does not fit."""
    if len(res.kind):
        value = _residual_values(res.kind, res.s_class, res.s_value, res.A, res.P, res.G, res.Z, res.s2,
                                 got_off, base, ext)
        if np.any(fixup.out_of_range(res.kind, value)):
            return False
        fixup.write(mem, res.where, res.kind, value)
    if len(res.got_where):
        slots = _addresses(res.got_class, res.got_value, base, ext)
        at = res.got_where[:, None] + np.arange(8)[None, :]
        mem[at] = slots.astype("<u8").view(np.uint8).reshape(-1, 8)
    return True
