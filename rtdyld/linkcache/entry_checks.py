"""The shape of a batch entry's metadata, checked before the batch is restored.

The checksums guard against damage, not against an entry written by
something else: a value of the wrong type or out of range must be a miss
here, not a wrong write, a call to a wrong address or a bare exception once
the batch is in use.  Plain comparisons, no numpy: a warm link of a small
batch imports none.
"""

from __future__ import annotations

from ..linked import STUB_SIZE


def check_meta(meta: dict, size: int, narchives: int) -> None:
    """Raise ValueError unless the metadata of a batch entry restored into an
    allocation of ``size`` bytes, searching ``narchives`` archives, has the
    shape a capture (:mod:`.plan`) gives it: every offset it publishes (GOT,
    stubs, ``__dso_handle``, unwind tables, init and fini arrays) inside one
    of the batch's segments, every name a str, every count a non-negative
    int (see the module's docstring for why).  Written for a new process, where
    every line run costs several times what it does once warm: what most
    batches lack (GOT, stubs, init arrays) is checked apart, lists in C."""
    spans = [(off, off + n, prot) for name, off, n, prot, zero_fill in meta["segments"]
             if type(name) is str and type(zero_fill) is bool]
    nsections, nobjects, got_off = meta["nsections"], meta["nobjects"], meta["got_off"]
    if not (len(spans) == len(meta["segments"]) and type(nsections) is int and type(nobjects) is int
            and nsections >= 0 and nobjects >= 0 and 0 <= got_off <= size and type(meta["low"]) is bool
            and type(meta["residual_quads"]) is bool and type(meta["prefix"]) is str
            and type(meta["later"]) is bytes):
        raise ValueError("segments, counts, flags or a GOT offset of the wrong type or out of range")
    names, kept, pulls = meta["definition_names"], meta["kept"], meta["pulls"]
    archive, offset, symbol = pulls["archive"], pulls["header_offset"], pulls["symbol"]
    if type(names) is not list or type(kept) is not list or type(symbol) is not list \
            or not len(archive) == len(offset) == len(symbol):
        raise ValueError("names or archive pulls of the wrong shape")
    "".join(names + kept + symbol)  # a TypeError unless every one is a str, in one pass in C
    # (min and max of anything but numbers raise TypeError too.)
    if archive and not (min(archive) >= 0 and max(archive) < narchives and min(offset) >= 0):
        raise ValueError("an archive pull out of range")
    got = meta["got"]
    if got:
        _inside(spans, got_off, got_off + 8 * len(got), "the GOT")
        _check_slots(spans, got, 8, "GOT")
    if meta["stubs"]:
        _check_slots(spans, meta["stubs"], STUB_SIZE, "stub")
    dso = meta["dso_handle"]
    if dso is not None:
        if type(dso) is not int:
            raise ValueError("__dso_handle of the wrong type")
        _inside(spans, dso, dso + 1, "__dso_handle")
    eh = meta["eh_frame"]
    if eh is not None:
        work, n, segment_offset = eh
        if type(work) is not int or type(n) is not int or type(segment_offset) is not int or n < 0:
            raise ValueError("unwind tables of the wrong type")
        _inside(spans, work, work + n, "the unwind tables", 1, work - segment_offset)
    if meta["init"] or meta["fini"]:
        _check_arrays(spans, meta["init"], "init")
        _check_arrays(spans, meta["fini"], "fini")
    inputs = meta.get("inputs")
    if inputs is not None:
        for _path, _ident, dg in (*inputs["objects"], *inputs["archives"]):
            if type(dg) is not str:
                raise ValueError("an input digest that is not a str")


def _inside(spans: list, lo: int, hi: int, what: str, prot: int = 0, start: int | None = None) -> None:
    """Raise ValueError unless ``[lo, hi)`` lies in one segment (``spans``:
    start, end, protection) with protection bits ``prot``, and which starts at
    ``start``, if given."""
    for s, e, p in spans:
        if s <= lo and hi <= e and p & prot == prot and (start is None or s == start):
            return
    raise ValueError(f"{what} at [{lo:#x}, {hi:#x}) lies outside the batch's segments")


def _check_slots(spans: list, rows: list, width: int, what: str) -> None:
    # [target, offset] rows: GOT slots or stubs.
    for t, o in rows:
        if type(t) is not int or type(o) is not int:
            raise ValueError(f"a {what} row of the wrong type")
        _inside(spans, o, o + width, f"a {what} slot")


def _check_arrays(spans: list, rows: list, what: str) -> None:
    # [priority, order, work, count, reverse, dtors] rows: where the pointers to call lie.
    for _prio, _order, work, count, reverse, dtors in rows:
        if type(work) is not int or type(count) is not int or count < 0 or type(reverse) is not bool \
                or type(dtors) is not bool:
            raise ValueError(f"an {what} array of the wrong shape")
        _inside(spans, work, work + 8 * count, f"an {what} array", 1)
