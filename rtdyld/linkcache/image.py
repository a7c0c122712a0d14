"""A finalized batch as a relocatable image: capture after a cold link, restore in a new process.

A batch is one allocation, so its segments keep their distances wherever it
lands: every fixup whose value depends only on addresses inside the batch
and on the distances between them (PC-relative calls and loads within the
batch, GOT-relative forms, stubs, sizes) is final once written and stays in
the image.  What remains are *residual* fixups: values that move with the
batch's base (absolute pointers to its own code and data, GOT slots) or with
an external symbol (host functions, earlier batches, user definitions).

Every psABI formula is linear in the addresses it uses, so each residual
value is ``const + cb * base + ext[j]`` (``cb`` in -1, 0, 1; ``j`` the one
external it names, if any).  The coefficients are found without knowing any
formula: every fixup is computed again by :func:`rtdyld.x86_64.fixup.compute`
with the batch moved, then with the externals moved, and the differences
give ``cb`` and whether ``ext[j]`` counts; the capture then checks that the
linear form reproduces every value the cold link wrote.  An entry stores
the rows grouped by field width, kind, ``cb`` and ``j`` (:func:`grouped`),
as their constants, with where each run is written (:func:`targets`), since
the groups give the rest of every row: at load each group is
range-checked with two comparisons of its extreme constants, and the values
are computed and written in a handful of numpy calls (:func:`apply_grouped`),
or, for a batch with few of them, listed in the entry's metadata and written
with plain integers (:func:`listed`, :func:`apply_listed`).
:func:`apply_records` is the row-by-row form of the same computation, the
reference the grouped one is tested against.  Anything the capture cannot
classify with certainty makes the batch uncacheable (:class:`Uncacheable`),
never approximately cached.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..linked import GOT_SYMBOL, LinkedBatch
from ..objfile.model import SEC_ABS
from ..x86_64 import fixup, scan
from ..x86_64.edges import FIELD_HIGH, FIELD_LOW, WIDTH, WIDTHS, Edge
from .listed import FEW_LISTED, apply_listed, group_shift  # noqa: F401 - FEW_LISTED, apply_listed: this module's API
from .tables import Uncacheable

U = np.uint64
_M64 = (1 << 64) - 1
REL, ABS, EXT = 0, 1, 2  # how an address moves: with the batch, never, with external j
_SIZE = (int(Edge.Size32), int(Edge.Size64))
_DIFFERENCE = (int(Edge.Difference32), int(Edge.Difference64))
_SHIFT = 0x1_0000_0000  # trial moves: the batch by this, the externals by three times this


@dataclasses.dataclass
class Residual:
    """Fixups (GOT slots among them, as Pointer64) to recompute at load:
    ``value = const + cb * base + (ext[j] if j >= 0)``."""

    where: np.ndarray  # int64 offset into the allocation
    kind: np.ndarray  # uint8 Edge
    const: np.ndarray  # uint64
    cb: np.ndarray  # int8
    j: np.ndarray  # int32 external index, -1 for none


# A Residual as one record per fixup: what grouped() sorts and an entry's
# rows (their constants and targets) are made from.
RECORD = np.dtype([("where", "<i8"), ("const", "<u8"), ("j", "<i4"), ("kind", "u1"), ("cb", "i1")], align=True)


def to_records(res: Residual) -> np.ndarray:
    out = np.zeros(len(res.kind), dtype=RECORD)
    for f in RECORD.names:
        out[f] = getattr(res, f)
    return out


def from_records(rec: np.ndarray) -> Residual:
    return Residual(**{f: rec[f] for f in RECORD.names})


def external_roles(lb: LinkedBatch) -> list[str]:
    """Per external: ``resolved`` (a definition outside the batch), ``got``
    (the batch's own GOT symbol), ``dso`` (its private ``__dso_handle``) or
    ``none`` (a weak reference left at 0).  ``got`` and ``dso`` move with the batch."""
    out = []
    for e in lb.externals:
        if e.definition is not None:
            out.append("resolved")
        elif e.name == GOT_SYMBOL and e.address == lb.got_base:
            out.append("got")
        elif lb.dso_handle and e.address == lb.dso_handle:
            out.append("dso")
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
    for o in scan.sorted_unique(oi).tolist():
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


def capture(lb: LinkedBatch, roles: list[str]) -> Residual:
    """The residual fixups of a freshly linked (not yet finalized) batch."""
    base = lb.allocation.target_base
    nsyms = sum(len(o.symbols) for o in lb.objects)
    mem = lb.allocation.memory
    here = np.array([e.address for e in lb.externals] or [0], dtype=U)
    parts = []
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

        def at(b: int, ext: np.ndarray) -> np.ndarray:
            S_ = _addresses(s_class, s_value, b, ext)
            return fixup.compute(kind, S_, A, P_off.view(U) + U(b), b + got_off, G, Z, s2.view(U) + U(b))

        if not np.array_equal(at(base, here), value):
            raise Uncacheable("the fixups cannot be recomputed from the batch's tables")
        j = np.where(s_class == EXT, s_value, -1)
        parts.append(_linear(where.astype(np.int64), kind.astype(np.uint8), value, j, base, here,
                             at(base + _SHIFT, here), at(base, here + U(3 * _SHIFT))))
    got_t = np.array(sorted(lb.got, key=lb.got.get), dtype=np.int64)
    if len(got_t):
        got_where = np.array([lb.got[x] - base for x in got_t.tolist()], dtype=np.int64)
        idx = got_where[:, None] + np.arange(8)[None, :]
        slots = mem[idx].copy().view("<u8").reshape(-1).astype(U)
        g_class, g_value = _classify(lb, got_t, slots, nsyms, roles)
        g_j = np.where(g_class == EXT, g_value, -1)
        kind64 = np.full(len(got_t), int(Edge.Pointer64), dtype=np.uint8)
        parts.append(_linear(got_where, kind64, slots, g_j, base, here,
                             _addresses(g_class, g_value, base + _SHIFT, here),
                             _addresses(g_class, g_value, base, here + U(3 * _SHIFT))))
    if not parts:
        return Residual(np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, U), np.zeros(0, np.int8),
                        np.zeros(0, np.int32))
    return Residual(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Residual)))


def _linear(where, kind, value, j, base: int, here: np.ndarray, moved_batch, moved_ext) -> Residual:
    """The entries among ``value`` that move, each as ``const + cb*base + ext[j]``."""
    db = (moved_batch - value).view(np.int64)
    cb = np.zeros(len(value), dtype=np.int8)
    cb[db == _SHIFT] = 1
    cb[db == -_SHIFT] = -1
    ce = (moved_ext - value).view(np.int64)
    uses_ext = ce == 3 * _SHIFT
    if np.any((db != 0) & (cb == 0)) or np.any((ce != 0) & ~uses_ext) or np.any(uses_ext & (j < 0)):
        raise Uncacheable("a fixup value that is not linear in the addresses it uses")
    j = np.where(uses_ext, j, -1).astype(np.int32)
    sel = np.flatnonzero((cb != 0) | uses_ext)
    const = value[sel] - cb[sel].astype(np.int64).view(U) * U(base)
    has = j[sel] >= 0
    const[has] -= here[j[sel][has]]
    return Residual(where[sel], kind[sel], const, cb[sel], j[sel])


_BYTE = {w: np.arange(w, dtype=np.int64) for w in (1, 2, 4, 8)}
# Up to this many fixups, plain integers beat numpy in a new process: each
# numpy call costs 10-40 µs there (cold caches after start-up), a fixup ~1 µs.
_FEW = 512
_ANY_VALUE_IN_64 = bool(np.all((fixup.LOW[WIDTH == 8] == np.iinfo(np.int64).min)
                               & (fixup.HIGH[WIDTH == 8] == np.iinfo(np.int64).max)))


def apply_records(rec: np.ndarray, mem: np.ndarray, base: int, ext: np.ndarray) -> bool:
    """Write the residual fixups, stored as :data:`RECORD` rows, for a batch at
    ``base`` whose externals are at ``ext``; False (nothing written) if a value
    does not fit its field."""
    if len(rec) <= _FEW:
        return _apply_rows(rec.tolist(), mem, base, ext)
    return _apply_arrays(from_records(rec), mem, base, ext)


def _apply_arrays(res: Residual, mem: np.ndarray, base: int, ext: np.ndarray) -> bool:
    value = res.const + res.cb.astype(np.int64).view(U) * U(base)
    if len(ext):
        value += np.append(ext, U(0))[res.j]  # j == -1 picks the appended 0
    width = WIDTH[res.kind]
    all64 = width.min() == 8
    # A 64-bit field holds any value: a batch of only those (pointer tables) needs no check.
    if not (all64 and _ANY_VALUE_IN_64) and np.any(fixup.out_of_range(res.kind, value)):
        return False
    if all64 and not np.any(res.where & 7) and len(mem) % 8 == 0:
        mem.view(U)[res.where >> 3] = value  # aligned pointers: one store each
    else:
        _store(mem, res.where, width, value)
    return True


def _apply_few(res: Residual, mem: np.ndarray, base: int, ext: np.ndarray) -> bool:
    """:func:`_apply_arrays` with Python integers: the same values, range checks and bytes."""
    rows = zip(*(getattr(res, f).tolist() for f in RECORD.names))
    return _apply_rows(list(rows), mem, base, ext)


def _apply_rows(rows: list[tuple], mem: np.ndarray, base: int, ext: np.ndarray) -> bool:
    """``rows`` of (where, const, j, kind, cb), as :data:`RECORD` orders them."""
    ext_ = ext.tolist()
    values = []
    for _at, c, j, k, b in rows:
        v = (c + b * base + (ext_[j] if j >= 0 else 0)) & _M64
        signed = v - (1 << 64) if v >> 63 else v
        if signed < FIELD_LOW[k] or signed > FIELD_HIGH[k]:
            return False
        values.append(v)
    view = memoryview(mem)
    for (at, _c, _j, k, _b), v in zip(rows, values):
        w = WIDTHS[k]
        view[at : at + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(w, "little")
    return True


def grouped(res: Residual) -> tuple[np.ndarray, list[list[int]]]:
    """``res`` as an entry stores it for :func:`apply_grouped`: :data:`RECORD`
    rows sorted by field width, then kind, ``cb`` and ``j``, and per run of
    rows sharing those ``[kind, cb, j, count, min const, max const]``, the
    constants read as signed."""
    rec = to_records(res)
    if not len(rec):
        return rec, []
    order = np.lexsort((rec["j"], rec["cb"], rec["kind"], WIDTH[rec["kind"]]))
    rec = rec[order]
    key = np.stack([rec["kind"].astype(np.int64), rec["cb"].astype(np.int64), rec["j"].astype(np.int64)], axis=1)
    starts = np.flatnonzero(np.concatenate([[True], np.any(key[1:] != key[:-1], axis=1)]))
    ends = np.append(starts[1:], len(rec))
    signed = rec["const"].view(np.int64)
    groups = [[*key[s].tolist(), int(e - s), int(signed[s:e].min()), int(signed[s:e].max())]
              for s, e in zip(starts.tolist(), ends.tolist())]
    return rec, groups


def targets(rec: np.ndarray, groups: list) -> tuple[np.ndarray, bool]:
    """Where :func:`apply_grouped` writes the rows :func:`grouped` arranged,
    worked out once when the entry is made: per run of one width, in row
    order, the 8-byte words' indices if every 8-byte field is aligned
    (``quads``), otherwise each field's byte offsets; all in one int32 array
    (a batch is far smaller than 2 GiB: half the bytes of int64 to read)."""
    width = WIDTH[rec["kind"]]
    where = rec["where"]
    quads = bool(np.all(where[width == 8] & 7 == 0))
    parts = []
    for w in (1, 2, 4, 8):
        at = where[width == w]
        parts.append(at >> 3 if w == 8 and quads else (at[:, None] + _BYTE[w]).ravel())
    index = np.concatenate(parts)
    if len(index) and (index.min() < 0 or index.max() > np.iinfo(np.int32).max):
        raise Uncacheable("a residual fixup beyond 2 GiB into the batch")
    return index.astype(np.int32), quads


def apply_grouped(const: np.ndarray, groups: list, mem: np.ndarray, base: int, ext: np.ndarray,
                  stored_targets: tuple[np.ndarray, bool], limit: int | None = None) -> bool:
    """:func:`apply_records` for rows :func:`grouped` arranged, given as their
    constants (``const``, uint64) and written where their :func:`targets`
    (``stored_targets``) say, as an entry stores them: the same values, range
    checks and bytes, in a handful of numpy calls whatever the count.  Raises
    ValueError, before writing anything, if a group is not one
    :func:`grouped` makes or a field lies outside the first ``limit`` bytes
    of ``mem`` (all of it by default; at load, the image: no fixup lands in
    zero-fill memory).

    Every row of a group moves by the same ``cb * base + ext[j]``: if the
    group's smallest and largest constants, moved, lie within the field's
    limits, so does every row, without wrapping around 2**64 (the check is
    then exact, two comparisons per group); otherwise the group's rows are
    checked one by one, with the cold link's 64-bit arithmetic."""
    ext_ = ext.tolist()
    deltas, counts = [], []
    runs: dict[int, list[int]] = {}  # width -> [first row, end]: rows are sorted by width
    at = 0
    for group in groups:
        d, fits = group_shift(group, base, ext_)
        kind, count = group[0], group[3]
        if not fits:
            v = (const[at : at + count] + U(d & _M64)).view(np.int64)
            if ((v < FIELD_LOW[kind]) | (v > FIELD_HIGH[kind])).any():
                return False
        deltas.append(d & _M64)
        counts.append(count)
        runs.setdefault(WIDTHS[kind], [at, at])[1] = at + count
        at += count
    if at != len(const) or sum(e - s for s, e in runs.values()) != at:
        raise ValueError("residual groups do not cover the rows")
    if not at:
        return True
    index, quads = stored_targets
    # Every write position checked before any is written: the 8-byte fields,
    # last, by word index when aligned (quads), all others byte by byte.
    words = runs[8][1] - runs[8][0] if quads and 8 in runs else 0
    nbytes = sum((e - s) * w for w, (s, e) in runs.items()) - 8 * words
    if len(index) != nbytes + words:
        raise ValueError("residual targets do not match the rows")
    end = len(mem) if limit is None else min(limit, len(mem))
    if index.min() < 0 or (nbytes and index[:nbytes].max() >= end) or (words and index[nbytes:].max() >= end // 8):
        raise ValueError("a residual fixup outside the batch's image")
    value = const + np.array(deltas, dtype=U).repeat(counts)
    done = 0
    for w, (s, e) in sorted(runs.items()):
        if w == 8 and quads:
            n = e - s
            mem.view(U)[index[done : done + n]] = value[s:e]
        else:
            n = (e - s) * w
            mem[index[done : done + n]] = value[s:e].astype(_LITTLE[w]).view(np.uint8)
        done += n
    return True


_LITTLE = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def listed(rec: np.ndarray) -> bytes:
    """The ``where`` column, then the ``const`` column (read as signed), of
    rows :func:`grouped` arranged, as the bytes of one int64 array, for
    :func:`apply_listed`: how an entry stores a batch's residual fixups when
    there are at most :data:`FEW_LISTED`.  One bytes object in the entry's
    metadata, not two lists of integers: the metadata decodes with a
    hundred-odd fewer objects, and the load reads the rows through a view."""
    return np.concatenate([rec["where"], rec["const"].view(np.int64)]).astype("<i8", copy=False).tobytes()


def _store(mem: np.ndarray, where: np.ndarray, width: np.ndarray, value: np.ndarray) -> None:
    """``value`` little-endian in ``width`` bytes at each ``where``: one scatter per
    width present (:func:`~rtdyld.x86_64.fixup.write` makes one per byte)."""
    raw = value.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)
    widths = (8,) if width.min() == 8 else [w for w in (1, 2, 4, 8) if np.any(width == w)]
    for w in widths:
        if len(widths) == 1:
            at, b = where, raw
        else:
            m = width == w
            at, b = where[m], raw[m]
        mem[at[:, None] + _BYTE[w]] = b[:, :w]


def prime() -> None:
    """Apply a few residual fixups to scratch memory the way a load does (rows
    read back from an entry's bytes, groups of 64-, 32-, 16- and 8-bit fields,
    against the batch and against externals, written through stored
    targets), so a process's first warm link finds numpy set up."""
    from .container import pack, unpack

    kinds = np.array([int(Edge.Pointer64), int(Edge.Branch32), int(Edge.Branch32), int(Edge.Pointer64),
                      int(Edge.Pointer16), int(Edge.Pointer8)], dtype=np.uint8)
    n = len(kinds)
    res = Residual(np.arange(n, dtype=np.int64) * 8, kinds, np.zeros(n, dtype=U),
                   np.array([1, -1, -1, 1, 0, 0], np.int8), np.array([-1, 0, 1, -1, -1, -1], dtype=np.int32))
    rec, groups = grouped(res)
    key = bytes(32)
    stored = unpack(pack(key, {}, {"r": rec["const"]}), key)[1]["r"]
    apply_grouped(stored, groups, np.zeros(8 * n, dtype=np.uint8), 1 << 40, np.full(2, 1 << 40, dtype=U),
                  targets(rec, groups))
    apply_listed(listed(rec), groups, np.zeros(8 * n, dtype=np.uint8), 1 << 40, [1 << 40] * 2)
