"""Link one batch: the phases between "objects added" and "memory sealed".

resolve → scan → layout → fixup, all on private state.  The result is a
:class:`LinkedBatch` holding an in-flight allocation and everything needed
to publish it; any failure before that releases the allocation, so the
session is exactly as it was.
"""

from __future__ import annotations

from functools import cache
from itertools import accumulate, chain, repeat
from operator import attrgetter

import numpy as np

from . import cxxabi, ifunc, limits, stub_slots, suggest, tls, unwind
from . import layout as L
from .definitions import BatchDefinitions, DefinitionTable
from .errors import (
    DuplicateSymbolError,
    LayoutError,
    MalformedObjectError,
    RelocationOverflowError,
    UndefinedSymbolError,
)
from .linked import GOT_SYMBOL, STUB_SIZE, External, LinkedBatch, PlacedSection
from .objfile.elf_deferred import convert_batch, convert_pending
from .objfile.model import (
    BATCH_RELOC_DTYPE,
    RELOC_DTYPE,
    SEC_ABS,
    SEC_COMMON,
    SEC_DISCARDED,
    SEC_UNDEF,
    SYM_DTYPE,
    Bind,
    ObjectFile,
    Section,
    SectionRole,
)
from .objfile.records import join
from .symbols import Resolver, SymbolDef
from .x86_64 import fixup, scan
from .x86_64.edges import ABSOLUTE_32, DIFFERENCE_KINDS, N_EDGES, NEEDS_GOT_SLOT, SIZE_KINDS, WIDTH, Edge, kind_mask

PC32_DATA = frozenset({Edge.Delta32, Edge.Delta16, Edge.Delta8})
_PC32_DATA = kind_mask(PC32_DATA)
# Plain ints: numpy probes an enum operand's attributes on every comparison (~2.5 us).
_LOCAL, _WEAK = int(Bind.LOCAL), int(Bind.WEAK)
# Roles as ints: hashing or comparing an IntEnum costs ~0.2 us.
_ROLE = attrgetter("role")
_PLAIN, _EH = int(SectionRole.NORMAL), int(SectionRole.EH_FRAME)  # sections that run nothing
_INIT_ARRAY, _CTORS = int(SectionRole.INIT_ARRAY), int(SectionRole.CTORS)
_FINI_ARRAY, _DTORS = int(SectionRole.FINI_ARRAY), int(SectionRole.DTORS)
_RELAXABLE, _DELTA32 = int(Edge.GOTDelta32Relaxable), int(Edge.Delta32)
_OBJECT_ROW = np.dtype((np.void, RELOC_DTYPE.itemsize))  # an object's relocation, as bytes
_NO_ROWS = np.zeros(0, dtype=np.int64)
_NO_ROWS.flags.writeable = False
# What assign_addresses adds to a symbol's value for the SEC_* numbers, -4
# to -1, and the mask it keeps of the sum: only an absolute symbol has an address.
assert (SEC_DISCARDED, SEC_COMMON, SEC_ABS, SEC_UNDEF) == (-4, -3, -2, -1)
_ALL = (1 << 64) - 1
_SPECIAL_BASES = [0, 0, 0, 0]
_SPECIAL_KEEP = [0, 0, _ALL, 0]


@cache
def _segment_protections() -> dict:
    """Each segment's final protection (IntFlag arithmetic costs ~1 us an operation)."""
    from memmgr import Prot

    return {L.TEXT: Prot.R | Prot.X, L.RODATA: Prot.R, L.DATA: Prot.R | Prot.W, L.BSS: Prot.R | Prot.W}


class BatchLinker:
    """The link of one batch.  Construct, then call :meth:`link`."""

    def __init__(
        self,
        objects: list[ObjectFile],
        resolver: Resolver,
        memory,
        kept_groups: set[str],
        pinned: dict[tuple[str, str], int] | None = None,
        pending=None,
    ):
        self.objects = objects
        self.resolver = resolver
        self.pending = pending
        self.memory = memory
        self.session_groups = kept_groups
        self.pinned = pinned or {}

    # ------------------------------------------------------------------ phases

    def link(self) -> LinkedBatch:
        self.select_groups()
        self.concatenate()
        self.resolve()
        self.scan()
        self.allocate()
        try:
            self.assign_addresses()
            self.write_sections()
            self.apply_fixups()
            return self.result()
        except BaseException:
            self.allocation.release()
            raise

    # --- COMDAT -------------------------------------------------------------

    def select_groups(self) -> None:
        """First definition of a COMDAT signature wins, across batches too."""
        self.kept_groups: set[str] = set()
        self.dropped: list[set[int]] = []
        for obj in self.objects:
            dropped: set[int] = set()
            for g in obj.groups:
                if g.signature in self.session_groups or g.signature in self.kept_groups:
                    dropped.update(g.sections)
                else:
                    self.kept_groups.add(g.signature)
            self.dropped.append(dropped)

    # --- one table for the whole batch ---------------------------------------

    def concatenate(self) -> None:
        """Every object's tables joined into one, in batch-wide numbering."""
        objects = self.objects
        # Objects read for the batch are converted together, straight into joined tables.
        converted = convert_batch(objects)
        if converted is None:
            convert_pending(objects)
        counts = [len(o.sections) for o in objects]
        if 0 not in counts and not any(self.dropped):
            # Nothing dropped and no object without sections: an object's
            # section i is batch-wide section start + i, no look-up table is
            # needed, and the sections are placed by one call per step for
            # the batch, not one per section.
            starts = [0, *accumulate(counts)]
            sections = list(chain.from_iterable(o.sections for o in objects))
            owners = chain.from_iterable(map(repeat, range(len(objects)), counts))
            numbers = chain.from_iterable(map(range, counts))
            placed = list(map(PlacedSection, owners, numbers, L.segments_of(sections)))
            renumber = False
        else:
            placed, sections, starts, gids = self._place_dropping()
            renumber = True
        self.placed = placed
        self.placed_sections = sections  # placed[i]'s Section, so later phases skip two look-ups per section
        gid_of = np.array(gids or [0], dtype=np.int64) if renumber else None
        if converted is not None:
            counts = converted.symbol_counts
            # The columns straight from the conversion: no model table in between.
            syms, attrs = converted.raw_symbols, converted.symbol_attrs
            owner = converted.symbol_owner
            gsec = converted.symbol_sections  # numbered across the batch already, as ``starts`` numbers them
        else:
            counts = [len(o.symbols) for o in objects]
            syms = attrs = join([o.symbols for o in objects], SYM_DTYPE)
            owner = np.repeat(np.arange(len(objects)), counts)
            gsec = syms["section"].astype(np.int64)
        # Each object's first symbol's number: a list, read for messages (and
        # an array made of it only for tables joined here, below).
        self.sym_base = sym_base = [0, *accumulate(counts)]
        self.nsyms = sym_base[-1]
        self.value = syms["value"]
        self.size = syms["size"]
        self.bind = attrs["bind"]
        self.stype = attrs["type"]
        self.vis = attrs["vis"]
        self.sym_obj = owner
        self.names = list(chain.from_iterable(o.names for o in objects))
        sec_base = None
        if converted is None:
            sec_base = np.array(starts, dtype=np.int64)
            # One masked add: gathering and scattering by a mask costs more on a large batch.
            np.add(gsec, sec_base.take(self.sym_obj), out=gsec, where=gsec >= 0)
        if renumber:
            defined = gsec >= 0
            gsec[defined] = gid_of.take(gsec[defined])
            # A symbol in a dropped section is a reference to the kept copy.
            gsec[defined & (gsec < 0)] = SEC_DISCARDED
        self.gsec = gsec
        if converted is not None:
            self._joined_relocs(converted.relocs, gid_of, converted.kind_counts)
            return
        tables = [o.relocs for o in objects]
        robj = np.repeat(np.arange(len(objects)), [len(t) for t in tables])
        out = self._batch_relocs(tables, robj)
        g = sec_base[robj] + out["section"]
        if renumber:
            g = gid_of[g]
            keep = g >= 0
            if np.count_nonzero(keep) < len(keep):
                out, g = out[keep], g[keep]
        out["section"] = g
        self._set_relocs(out)

    def _place_dropping(self) -> tuple[list[PlacedSection], list[Section], list[int], list[int]]:
        """The batch's sections when COMDAT groups dropped some (or an object
        has none): the kept ones placed, their Sections, each object's first
        entry in the look-up table, and that table, which numbers an object's
        sections across the batch (-1: dropped; an object without sections
        takes one entry)."""
        placed: list[PlacedSection] = []
        sections: list[Section] = []
        gids: list[int] = []
        starts = [0]
        segment_of = L.segment_of
        for oi, obj in enumerate(self.objects):
            dropped = self.dropped[oi]
            own = obj.sections
            if not dropped:
                gids.extend(range(len(placed), len(placed) + len(own)))
                placed += [PlacedSection(oi, si, segment_of(s)) for si, s in enumerate(own)]
                sections += own
            else:
                for si, s in enumerate(own):
                    if si in dropped:
                        gids.append(-1)
                        continue
                    gids.append(len(placed))
                    placed.append(PlacedSection(oi, si, segment_of(s)))
                    sections.append(s)
            if not own:
                gids.append(-1)
            starts.append(len(gids))
        return placed, sections, starts, gids

    def _set_relocs(self, rows: np.ndarray, census: list[int] | None = None) -> None:
        """``rows`` are the batch's relocations now, and ``census`` (counted
        if not given) how many there are of each edge kind: later phases skip
        the passes for kinds the batch lacks, and the fixups count nothing."""
        self.relocs = rows
        if census is None:
            census = np.bincount(rows["kind"], minlength=N_EDGES).tolist()
        self.kind_count = census[:N_EDGES]  # (a conversion counts every value of the byte)

    def _joined_relocs(self, out: np.ndarray, gid_of: np.ndarray | None, census: list[int]) -> None:
        """The batch's relocations from the rows converted in its layout
        (sections numbered as ``starts`` numbers them, symbols as the batch does,
        ``census`` their kinds' count): when sections were dropped, sections
        renumbered.  The converted rows keep their sections (the objects'
        own tables are cut from them), so the renumbered rows are a copy."""
        if gid_of is not None:
            g = gid_of.take(out["section"])
            keep = g >= 0
            out = out.compress(keep)
            out["section"] = g.compress(keep)
            if len(out) != len(keep):
                census = None  # (rows dropped: counted again)
        self._set_relocs(out, census)

    def _batch_relocs(self, tables: list[np.ndarray], robj: np.ndarray) -> np.ndarray:
        """The objects' relocation tables end to end, with each row's object,
        its own symbol number and the batch's (sections still the objects')."""
        n = len(robj)
        out = np.empty(n, dtype=BATCH_RELOC_DTYPE)
        if n and all(t.dtype == RELOC_DTYPE and t.flags.c_contiguous for t in tables):
            # An object's columns are the first bytes of a batch row: each row is
            # copied once as an opaque record, straight from the objects' tables
            # (no joined copy in between: a large batch's tables are megabytes of
            # fresh pages), not by strided copies per column (ten times slower).
            prefix = np.ndarray((n,), dtype=_OBJECT_ROW, buffer=out, strides=(BATCH_RELOC_DTYPE.itemsize,))
            np.concatenate([t.view(_OBJECT_ROW) for t in tables], out=prefix)
        else:
            r = join(tables, RELOC_DTYPE)
            for f in RELOC_DTYPE.names:
                out[f] = r[f]
        out["obj"] = robj
        sym = out["sym"]
        out["lsym"] = sym
        base = np.array(self.sym_base, dtype=np.int64).take(robj)
        sym += base
        sym2 = out["sym2"]
        has2 = sym2 >= 0
        if np.count_nonzero(has2):  # count_nonzero: ~0.5 us, any() ~5
            sym2[has2] += base[has2]
        return out

    def name_of(self, gsym: int) -> str:
        oi = int(self.sym_obj[gsym])
        return self.objects[oi].describe_symbol(gsym - self.sym_base[oi])

    def where(self, k: int) -> str:
        """'obj: section+0xoff' for relocation k."""
        r = self.relocs[k]
        p = self.placed[int(r["section"])]
        obj = self.objects[p.obj]
        return f"{obj.name}: {obj.sections[p.index].name}+{int(r['offset']):#x}"

    def rtype_name(self, k: int) -> str:
        r = self.relocs[k]
        return self.objects[int(r["obj"])].reloc_type_name(int(r["rtype"]))

    # --- symbol resolution ------------------------------------------------------

    def resolve(self) -> None:
        n = self.nsyms
        canon = np.arange(n, dtype=np.int64)
        # (ndarray methods rather than the numpy functions wrapping them;
        # ``bind`` is a strided column: compared first, indexed not taken.)
        named = (self.bind != _LOCAL).nonzero()[0]
        names, gsec, bind = self.names, self.gsec, self.bind
        defs: dict[str, int] = {}
        strong: dict[str, bool] | None = {}
        commons: dict[str, list[int]] = {}
        refs: dict[str, list[int]] = {}
        losers: list[tuple[str, int]] = []  # weak or duplicate-weak definitions that did not win
        # A batch's definitions rarely share a name (or lack one): then they are
        # indexed by dict() at C speed, thousands for a large archive, and the
        # loop below sees only the other symbols.
        named_sec = gsec.take(named)
        defining = (named_sec >= 0) | (named_sec == SEC_ABS)
        def_idx = named.compress(defining)
        def_list = def_idx.tolist()
        def_names = [names[i] for i in def_list]
        if "" not in def_names:
            defs = dict(zip(def_names, def_list))
            if len(defs) == len(def_names):  # no name twice
                # Which of them are strong is asked only by a tentative or an
                # earlier batch's definition (most batches have neither): made then.
                strong = None
                rest = ~defining
                named, named_sec = named.compress(rest), named_sec.compress(rest)
            else:
                defs = {}
        sec_of = named_sec.tolist()
        # (Only a definition's binding is read below: when the definitions were indexed above, the loop sees none.)
        weak_of = (bind[named] == _WEAK).tolist() if strong is not None else repeat(False)
        for i, sec, weak in zip(named.tolist(), sec_of, weak_of):
            name = names[i]
            if not name:
                continue
            if sec >= 0 or sec == SEC_ABS:
                prev = defs.get(name)
                if prev is None:
                    defs[name] = i
                    strong[name] = not weak
                elif not weak and strong[name]:
                    raise DuplicateSymbolError(
                        f"duplicate symbol {name!r}: defined in {self._definer(prev)} and in {self._definer(i)}"
                        f"\n  hint: {suggest.duplicate_hint(name)}"
                    )
                elif not weak:
                    losers.append((name, prev))
                    defs[name], strong[name] = i, True
                else:
                    losers.append((name, i))
            elif sec == SEC_COMMON:
                commons.setdefault(name, []).append(i)
            else:
                refs.setdefault(name, []).append(i)
        published = self.resolver.published
        if strong is None and (commons or (published and not published.keys().isdisjoint(defs))):
            strong = dict(zip(def_names, (bind[def_idx] != _WEAK).tolist()))
        # Tentative definitions merge into one zero-filled object unless a real one exists.
        self.commons: dict[str, tuple[int, int, int]] = {}  # name -> (canonical sym, size, align)
        for name, idx in commons.items():
            if name in defs and strong[name]:
                refs.setdefault(name, []).extend(idx)
                continue
            if name in defs:  # a weak definition loses to a tentative one
                losers.append((name, defs.pop(name)))
            size = int(self.size[idx].max())
            align = int(self.value[idx].max()) or 1
            defs[name] = idx[0]
            strong[name] = True
            self.commons[name] = (idx[0], size, align)
            refs.setdefault(name, []).extend(idx[1:])
        for name, i in losers:
            refs.setdefault(name, []).append(i)
        self.externals: list[External] = []
        self._ext_index: dict[str, int] = {}
        # Earlier batches win over weak definitions here; strong ones clash.
        # The names both define, by one set intersection (a membership test
        # per definition would be a Python call each); then in ``defs``' order.
        clash = published.keys() & defs.keys() if published else ()
        for name in [m for m in defs if m in clash] if clash else []:
            earlier = published[name]
            i = defs[name]
            if strong[name] and earlier.bind != Bind.WEAK:
                batch = f"batch #{earlier.batch.number}" if hasattr(earlier.batch, "number") else "that batch"
                raise DuplicateSymbolError(
                    f"duplicate symbol {name!r}: defined in {self._definer(i)} and already "
                    f"loaded from {earlier.origin} ({batch})\n  hint: {suggest.duplicate_hint(name, batch)}"
                )
            if not strong[name] or earlier.bind != Bind.WEAK:
                del defs[name]
                refs.setdefault(name, []).append(i)
                self.commons.pop(name, None)
                self._external(name, earlier)
        self.defs = defs
        self.got_ext = None
        self.dso_ext = None
        missing: dict[str, list[int]] = {}
        # Each reference's canonical symbol is gathered in lists and stored in
        # one numpy call: a store per name costs ~1 us, more than the look-up.
        rows: list[int] = []
        to: list[int] = []
        prefixes = [o.symbol_prefix for o in self.objects]
        # Usually one prefix for the batch: then no per-name look-up of the referrer's.
        prefix = prefixes[0] if len(set(prefixes)) == 1 else None
        outside: list[str] = []  # in reference order, which is the order of the externals
        for name, idx in refs.items():
            d = defs.get(name)
            if d is None:
                outside.append(name)
                continue
            rows += idx
            to += [d] * len(idx)
        # The outside names are resolved together: each source of the chain is
        # asked once for the names still missing (Dylib.resolve_many).
        found = self._resolve_outside(outside, refs, prefix, prefixes) if outside else {}
        for name in outside:
            idx = refs[name]
            if name == GOT_SYMBOL:
                d = self.got_ext = self._external(name, None, 0, "the batch's GOT")
            elif name == cxxabi.DSO_HANDLE:  # private to the batch, see rtdyld.cxxabi
                d = self.dso_ext = self._external(name, None, 0, "the batch's DSO handle")
            elif name in found:
                d = self._external(name, found[name])
            elif not np.any(bind[idx] != _WEAK):
                d = self._external(name, None, 0, "weak undefined")
            else:
                missing[name] = idx
                continue
            rows += idx
            to += [d] * len(idx)
        if rows:
            canon[rows] = to
        if missing:
            self._undefined(missing)
        self.canon = canon
        self._check_discarded_locals()

    def _resolve_outside(self, outside: list[str], refs: dict[str, list[int]], prefix: str | None,
                         prefixes: list[str]) -> dict[str, SymbolDef]:
        """The dylib chain's definitions of the names the batch leaves undefined
        (its GOT and DSO handle aside), each asked with its referrer's prefix."""
        names = [n for n in outside if n != GOT_SYMBOL and n != cxxabi.DSO_HANDLE]
        if prefix is not None:
            return self.resolver.resolve_many(names, prefix, self.pending)
        by_prefix: dict[str, list[str]] = {}
        sym_obj = self.sym_obj
        for name in names:
            by_prefix.setdefault(prefixes[sym_obj[refs[name][0]]], []).append(name)
        found: dict[str, SymbolDef] = {}
        for p, group in by_prefix.items():
            found.update(self.resolver.resolve_many(group, p, self.pending))
        return found

    def _external(self, name: str, d: SymbolDef | None, address: int = 0, source: str = "") -> int:
        if name not in self._ext_index:
            self._ext_index[name] = self.nsyms + len(self.externals)
            if d is not None:
                self.externals.append(External(name, d.address, "", d.size, d))
            else:
                self.externals.append(External(name, address, source))
        return self._ext_index[name]

    def _definer(self, i: int) -> str:
        oi = int(self.sym_obj[i])
        sec = int(self.gsec[i])
        where = ""
        if sec >= 0:
            p = self.placed[sec]
            where = f" ({self.objects[oi].sections[p.index].name})"
        return f"{self.objects[oi].name}{where}"

    def _undefined(self, missing: dict[str, list[int]]) -> None:
        referrers: dict[str, list[str]] = {}
        lines = []
        sym_of_reloc = self.relocs["sym"]
        for name, idx in sorted(missing.items()):
            who = []
            for i in idx:
                hit = np.flatnonzero(sym_of_reloc == i)
                oi = int(self.sym_obj[i])
                if len(hit):
                    who.append(f"{self.where(int(hit[0]))}")
                else:
                    who.append(self.objects[oi].name)
            referrers[name] = who
            lines.append(f"  {name!r}, referenced by {', '.join(who)}")
        prefixes = {name: self.objects[int(self.sym_obj[idx[0]])].symbol_prefix for name, idx in missing.items()}
        hints = "".join(f"\n  hint: {h}" for h in suggest.undefined_hints(sorted(missing), prefixes.get))
        noun = "symbol" if len(missing) == 1 else "symbols"
        raise UndefinedSymbolError(
            f"undefined {noun}: {', '.join(sorted(missing))}\n" + "\n".join(lines) + hints,
            referrers,
        )

    def _check_discarded_locals(self) -> None:
        """Relocations against local symbols of dropped COMDAT sections.

        Unwind tables of a dropped copy still point at it; those entries are
        harmless if left unrelocated.  Anything else is a malformed group.
        """
        tgt = self.target = self.canon.take(self.relocs["sym"])
        if not np.count_nonzero(self.gsec == SEC_DISCARDED):
            return
        internal = tgt < self.nsyms
        bad = np.zeros(len(self.relocs), dtype=bool)
        bad[internal] = self.gsec[tgt[internal]] == SEC_DISCARDED
        if not np.count_nonzero(bad):
            return
        roles = np.array([self.objects[p.obj].sections[p.index].role for p in self.placed])
        in_eh = roles[self.relocs["section"]] == SectionRole.EH_FRAME
        self.dropped_eh = self.relocs[bad & in_eh][["section", "offset"]]
        if np.count_nonzero(bad & ~in_eh):
            k = int(np.flatnonzero(bad & ~in_eh)[0])
            raise MalformedObjectError(
                f"{self.where(k)}: {self.rtype_name(k)} refers to {self.name_of(int(self.relocs['sym'][k]))!r} "
                "in a discarded COMDAT group section"
            )
        self._set_relocs(self.relocs[~bad])
        self.target = tgt[~bad]

    # --- scan ---------------------------------------------------------------

    def scan(self) -> None:
        r = self.relocs
        kind = r["kind"]
        tgt = self.target  # set by resolve
        n = self.nsyms
        # Passes for edge kinds the batch lacks are skipped, as its census
        # (_set_relocs) says: numpy's per-call cost, not the rows, is what a
        # small batch pays.
        internal = tgt < n
        # Targets that are absolute symbols: not in the batch, and their own reach.
        # Objects have some (STT_FILE), relocations against them are rare.
        self.absolute = None
        if n:  # (an outside target, past the batch's symbols, clips to the last: masked out below)
            absolute = self.gsec.take(tgt, mode="clip") == SEC_ABS
            if np.count_nonzero(absolute):
                absolute &= internal
                if np.count_nonzero(absolute):
                    internal &= ~absolute
                    self.absolute = absolute
        self.internal = internal
        # Code built without PIC must live low; so must code whose 32-bit
        # PC-relative data references only reach targets that live low.
        self.low = self.has_kind(ABSOLUTE_32) and bool(np.count_nonzero(scan.needs_low_memory(kind, internal)))
        reachable, stuck, branch_like = self._reachability(self.low)
        if len(stuck) and not self.low:
            low_reachable, low_stuck, low_branch = self._reachability(True)
            if not len(low_stuck):
                self.low = True
                reachable, stuck, branch_like = low_reachable, low_stuck, low_branch
            else:
                self._reachability(False)
        if len(stuck):
            self._unreachable(int(stuck[0]))
        relaxable = opcode = modrm = None  # read only for relaxable loads
        if self.kind_count[_RELAXABLE]:
            relaxable = kind == _RELAXABLE
            opcode = np.zeros(len(r), dtype=np.uint8)
            modrm = np.zeros(len(r), dtype=np.uint8)
            opcode[relaxable], modrm[relaxable] = self._opcode_bytes(relaxable)
        self.scanned = scan.scan(kind, tgt, reachable, relaxable, opcode, modrm, branch_like,
                                 self.has_kind(NEEDS_GOT_SLOT))
        self.scanned = tls.keep_tls_calls(self, self.scanned)
        self.scanned, self.ifunc = ifunc.plan(self, self.scanned)
        self.scanned, self.stub_slots = stub_slots.plan(self, self.scanned)

    def has_kind(self, kinds) -> bool:
        """Does the batch have a relocation of one of ``kinds`` (after scan)?"""
        count = self.kind_count
        return any(count[k] for k in kinds)

    def _reachability(self, low: bool):
        """Per relocation: is the target in reach from the region ``low`` picks;
        which 32-bit data references cannot reach; which fixups are branches
        (None and None when every target is in reach: nothing to tell apart)."""
        kind, tgt, n, internal = self.relocs["kind"], self.target, self.nsyms, self.internal
        import memmgr  # (the package, as in allocate)

        try:
            lo, hi = self.memory.reach_range(low=low)
        except memmgr.MemMgrError as e:
            raise LayoutError(f"cannot reserve memory for the batch: {e}") from None
        self.reach = (lo, hi)
        stuck = _NO_ROWS
        # The batch's own GOT and DSO handle are placed with it: in reach.
        own = (self.got_ext, self.dso_ext)
        ext_addr = [e.address for e in self.externals]
        if self.absolute is None and scan.all_in_reach([a for i, a in enumerate(ext_addr, n) if i not in own], lo, hi):
            return None, stuck, None  # the usual case: every target
        branch_like = np.zeros(len(kind), dtype=bool)
        ext_ok = scan.in_reach(np.array(ext_addr, dtype=np.uint64), lo, hi)
        for owned in own:
            if owned is not None:
                ext_ok[owned - n] = True
        reachable = internal.copy()
        if self.externals:
            ext = tgt >= n
            reachable[ext] = ext_ok[tgt[ext] - n]
        if self.absolute is not None:
            absolute = self.absolute
            reachable[absolute] = scan.in_reach(self.value[tgt[absolute]], lo, hi)
        if np.count_nonzero(reachable) == len(reachable):
            return reachable, stuck, branch_like
        far_data = _PC32_DATA[kind] & ~reachable
        if np.count_nonzero(far_data):
            b2, b1 = self._opcode_bytes(far_data)
            is_branch = (kind[far_data] == _DELTA32) & (
                (b1 == 0xE8) | (b1 == 0xE9) | ((b2 == 0x0F) & (b1 >= 0x80) & (b1 <= 0x8F))
            )
            branch_like[far_data] = is_branch
            stuck = np.flatnonzero(far_data)[~is_branch]
        return reachable, stuck, branch_like

    def _opcode_bytes(self, mask: np.ndarray, backs: tuple[int, ...] = (2, 1)) -> list[np.ndarray]:
        """For each of ``backs``, the byte that many bytes before each masked
        fixup, from the object's bytes (0 before the section's start): the
        instruction bytes a relaxation or a branch test reads, all in one pass."""
        idx = np.flatnonzero(mask)
        outs = [np.zeros(len(idx), dtype=np.uint8) for _ in backs]
        if not len(idx):
            return outs
        secs = self.relocs["section"][idx]
        offs = self.relocs["offset"][idx].astype(np.int64)
        # One slice of rows per section (relocations come sorted by section, so the sort is cheap).
        order = np.argsort(secs, kind="stable")
        ordered = secs[order]
        cuts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
        for start, end in zip([0, *cuts.tolist()], [*cuts.tolist(), len(idx)]):
            p = self.placed[int(ordered[start])]
            data = self.objects[p.obj].sections[p.index].data
            if not len(data):
                continue
            rows = order[start:end]
            section_bytes = np.frombuffer(data, dtype=np.uint8)
            fixup_at = offs[rows]
            for out, back in zip(outs, backs):
                at = fixup_at - back
                ok = at >= 0
                out[rows[ok]] = section_bytes[at[ok]]
        return outs

    def _unreachable(self, k: int) -> None:
        r = self.relocs[k]
        t = int(self.target[k])
        e = self.externals[t - self.nsyms] if t >= self.nsyms else None
        name = e.name if e else self.name_of(int(r["sym"]))
        addr = e.address if e else int(self.value[t])
        source = f" in {e.source}" if e and e.source else ""
        lo, hi = self.reach
        msg = (
            f"{self.where(k)}: {self.rtype_name(k)} against {name!r} (at {addr:#x}{source}) needs the code "
            f"within ±2 GiB of it, but the batch is placed at {lo:#x}-{hi:#x}"
        )
        if self.low:
            j = int(np.flatnonzero(scan.needs_low_memory(self.relocs["kind"], self.internal))[0])
            msg += (
                f", below 2 GiB, because {self.where(j)} stores an absolute 32-bit address "
                f"({self.rtype_name(j)} against {self.name_of(int(self.relocs['sym'][j]))!r}) as code built "
                "without PIC does. Both constraints cannot be met at once: rebuild with -fPIC or -fPIE"
            )
        else:
            msg += "; rebuild with -fPIC so the reference goes through the GOT"
        raise LayoutError(msg)

    # --- layout -------------------------------------------------------------

    def allocate(self) -> None:
        # The package, not names from it: a from-import of a package runs
        # Python-level import code on every call.
        import memmgr

        plans = L.plan_segments()
        order = tls.image_first(self, self.placed)
        sections = self.placed_sections
        if order is not self.placed:
            sections = [self.objects[p.obj].sections[p.index] for p in order]
        # Unwind tables are placed after the rest of their segment, by rtdyld.unwind.
        tables, table_sections = L.place_sections(plans, order, sections, unwind.table_objects(self.objects))
        self.eh_frame = unwind.place(plans[L.RODATA], tables, table_sections)
        if self.dso_ext is not None:
            self.dso_off = plans[L.RODATA].place(cxxabi.DSO_HANDLE_SIZE, 8)
        self.stub_off = plans[L.TEXT].place(STUB_SIZE * len(self.scanned.stub_targets), 8)
        self.got_off = plans[L.RODATA].place(8 * len(self.scanned.got_targets), 8)
        self.tls = tls.plan(self, plans[L.RODATA])
        self.common_off = {
            name: plans[L.BSS].place(size, align) for name, (_, size, align) in self.commons.items()
        }
        limits.check_batch_fits(self, plans)
        prot = _segment_protections()
        SegmentRequest = memmgr.SegmentRequest
        # zero_fill passed by position: a keyword takes the named tuple's slower path.
        requests = [SegmentRequest(name, plans[name].size, prot[name], name == L.BSS) for name in L.SEGMENT_ORDER]
        try:
            self.allocation = self.memory.allocate(requests, low=self.low)
        except memmgr.MemMgrError as e:
            where = "below 2 GiB " if self.low else ""
            total = sum(r.size for r in requests)
            raise LayoutError(
                f"no room {where}for the batch of {suggest.listing(self.objects)} ({total} bytes): {e}"
                f"\n  hint: {suggest.allocation_hint(self.low)}"
            ) from None
        self.seg_offset = {s.name: s.offset for s in self.allocation.segments}

    def assign_addresses(self) -> None:
        base = self.allocation.target_base
        pinned = self.pinned
        seg_offset = self.seg_offset
        works, addresses = [], []
        for p in self.placed:
            p.work = work = p.work + seg_offset[p.segment]
            p.address = address = base + work
            works.append(work)
            addresses.append(address)
        self.pinned_sections = False  # else the fixups read each section's address
        if pinned:
            for i, (p, s) in enumerate(zip(self.placed, self.placed_sections)):
                pin = pinned.get((self.objects[p.obj].name, s.name))
                if pin is not None:
                    p.address = addresses[i] = pin
                    self.pinned_sections = True
        n = self.nsyms
        self.sec_work = np.array(works or [0], dtype=np.int64)
        # Each symbol's address, its section's plus its value, by one gather
        # over the sections and the SEC_* numbers after them (a negative
        # number counts from the end): an absolute symbol's is its value, an
        # undefined, tentative or discarded one's none yet (masked to 0).
        self.sec_addr = np.array(addresses + _SPECIAL_BASES, dtype=np.uint64)
        keep = np.array([_ALL] * len(addresses) + _SPECIAL_KEEP, dtype=np.uint64)
        addr = np.empty(n + len(self.externals), dtype=np.uint64)
        own = addr[:n]
        np.add(self.sec_addr.take(self.gsec), self.value, out=own)
        own &= keep.take(self.gsec)
        for name, (i, _, _) in self.commons.items():
            addr[i] = base + self.seg_offset[L.BSS] + self.common_off[name]
        self.got_base = base + self.seg_offset[L.RODATA] + self.got_off
        self.stub_base = base + self.seg_offset[L.TEXT] + self.stub_off
        if self.externals:
            addr[n:] = [e.address for e in self.externals]
        if self.got_ext is not None:
            addr[self.got_ext] = self.got_base
            self.externals[self.got_ext - n].address = self.got_base
        if self.dso_ext is not None:
            addr[self.dso_ext] = self.externals[self.dso_ext - n].address = base + self.seg_offset[L.RODATA] + self.dso_off
        if self.eh_frame is not None:
            self.eh_frame.work = self.seg_offset[L.RODATA] + self.eh_frame.segment_offset
            self.eh_frame.address = base + self.eh_frame.work
        self.addr = addr
        self.got = {t: self.got_base + 8 * i for i, t in enumerate(self.scanned.got_targets.tolist())}
        self.stubs = {t: self.stub_base + STUB_SIZE * i for i, t in enumerate(self.scanned.stub_targets.tolist())}

    # --- bytes --------------------------------------------------------------

    def write_sections(self) -> None:
        mem = self.allocation.memory
        view = memoryview(mem)  # a byte copy per section, without making an array of each
        for p, s in zip(self.placed, self.placed_sections):
            if len(s.data):
                try:
                    view[p.work : p.work + s.size] = s.data
                except (TypeError, ValueError):  # not plain bytes: numpy converts (or names the mismatch)
                    mem[p.work : p.work + s.size] = np.frombuffer(s.data, dtype=np.uint8)
        got_work = self.seg_offset[L.RODATA] + self.got_off
        targets = self.scanned.got_targets
        if len(targets):
            slots = self.addr[targets]
            mem[got_work : got_work + 8 * len(targets)] = slots.astype("<u8").view(np.uint8)
        stub_work = self.seg_offset[L.TEXT] + self.stub_off
        stubs = self.scanned.stub_targets.tolist()
        if stubs:  # jmp *slot(%rip), displacement from the end of the 6-byte jmp; built as bytes, copied once
            code = b"".join(
                b"\xff\x25" + (self.got[t] - (self.stub_base + STUB_SIZE * i + 6)).to_bytes(4, "little", signed=True)
                + b"\xcc\xcc"
                for i, t in enumerate(stubs)
            )
            view[stub_work : stub_work + len(code)] = code

    def apply_fixups(self) -> None:
        r = self.relocs
        if not len(r):
            self.tables = {}
            self._finish_eh_frame()
            tls.resolve_unreferenced(self)
            return
        kind = r["kind"].copy()
        tgt = self.target
        sc = self.scanned
        mem = self.allocation.memory
        section, offset = r["section"], r["offset"]
        where = self.sec_work.take(section)
        where += offset.view(np.int64)
        if self.pinned_sections:
            P = self.sec_addr.take(section) + offset
        else:  # every section at its place in the allocation
            P = where.view(np.uint64) + np.uint64(self.allocation.target_base)
        S = self.addr.take(tgt)
        if len(sc.stub_targets):  # stub_targets is sorted: each stub's number in one search
            n_stub = np.searchsorted(sc.stub_targets, tgt[sc.use_stub]).astype(np.uint64)
            S[sc.use_stub] = np.uint64(self.stub_base) + np.uint64(STUB_SIZE) * n_stub
        # G, Z and S2 where the batch has no kind reading them: one array of
        # zeros, read-only, shared.
        zero = np.zeros(len(r), dtype=np.uint64)
        zero.flags.writeable = False
        G = Z = S2 = zero
        if len(sc.got_targets):  # got_targets is sorted: membership and slot number in one search
            G = np.zeros(len(r), dtype=np.uint64)
            at = np.minimum(np.searchsorted(sc.got_targets, tgt), len(sc.got_targets) - 1)
            slot = (sc.got_targets[at] == tgt) & (sc.relax == scan.RELAX_NONE)
            G[slot] = at[slot].astype(np.uint64) * np.uint64(8)
        if self.has_kind(SIZE_KINDS):  # only the Size kinds read Z
            Z = np.zeros(len(r), dtype=np.uint64)
            internal = tgt < self.nsyms
            Z[internal] = self.size[tgt[internal]]
            ext = ~internal
            if np.count_nonzero(ext):
                ext_size = np.array([e.size for e in self.externals], dtype=np.uint64)
                Z[ext] = ext_size[tgt[ext] - self.nsyms]
        if self.has_kind(DIFFERENCE_KINDS):  # the only kinds with a subtrahend
            S2 = np.zeros(len(r), dtype=np.uint64)
            has2 = r["sym2"] >= 0
            S2[has2] = self.addr[self.canon[r["sym2"][has2]]]
        S = tls.resolve(self, kind, S, P, G, Z, S2, where)
        stub_slots.bind(self, kind, S)
        relaxing = self.kind_count[_RELAXABLE] and np.count_nonzero(sc.relax)  # (only those loads relax)
        # The kinds' census, when it holds (stub slots rewrite kinds), spares
        # the fixups counting them again; relaxed loads are Delta32 now.
        census = self.kind_count if self.stub_slots is None else None
        if relaxing:  # relaxed GOT loads become plain PC-relative references
            relaxed = sc.relax != scan.RELAX_NONE
            kind[relaxed] = Edge.Delta32
            jmp = sc.relax == scan.RELAX_JMP
            where[jmp] -= 1
            P[jmp] -= np.uint64(1)
            if census is not None:
                census = census.copy()
                census[_RELAXABLE] -= relaxing
                census[_DELTA32] += relaxing
        value = fixup.compute(kind, S, r["addend"], P, self.got_base, G, Z, S2, census)
        bad = fixup.out_of_range(kind, value)
        if np.count_nonzero(bad):
            self._overflow(np.flatnonzero(bad), kind, value, S)
        if relaxing:  # rewrite relaxed instructions, then store every value
            mov = sc.relax == scan.RELAX_MOV
            mem[where[mov] - 2] = scan.LEA
            call = sc.relax == scan.RELAX_CALL
            mem[where[call] - 2] = 0x67
            mem[where[call] - 1] = 0xE8
            mem[where[jmp] - 1] = 0xE9
            mem[where[jmp] + 4] = 0x90
        fixup.write(mem, where, kind, value, census)
        self._finish_eh_frame()
        self.tables = {
            "relocs": r,
            "kind": kind,
            "target": tgt,
            "where": where,
            "P": P,
            "S": S,
            "G": G,
            "value": value,
            "use_stub": sc.use_stub,
            "relax": sc.relax,
        }

    def _finish_eh_frame(self) -> None:
        d = getattr(self, "dropped_eh", None)
        dropped = self.sec_work[d["section"]] + d["offset"].astype(np.int64) if d is not None else []
        unwind.finish(self.eh_frame, self.allocation.memory, dropped)

    def _overflow(self, bad: np.ndarray, kind, value, S) -> None:
        lines = []
        for k in bad[:5].tolist():
            r = self.relocs[k]
            t = int(self.target[k])
            name = self.externals[t - self.nsyms].name if t >= self.nsyms else self.name_of(int(r["sym"]))
            v = int(value[k].view(np.int64))
            width = int(WIDTH[kind[k]]) * 8
            lines.append(
                f"{self.where(k)}: {self.rtype_name(k)} against {name!r}: value {v:#x} "
                f"(S={int(S[k]):#x}, A={int(r['addend']):#x}) does not fit in {width} bits"
            )
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        hint = suggest.overflow_hint(np.unique(kind[bad]).tolist())
        hint = f"\n  hint: {hint}" if hint else ""
        raise RelocationOverflowError(
            "relocation overflow:\n  " + "\n  ".join(lines) + more + hint
        )

    # --- result ---------------------------------------------------------------

    def result(self) -> LinkedBatch:
        # Definitions stay in the batch's arrays until asked for (rtdyld.definitions).
        table = DefinitionTable(
            self.addr, self.size, self.stype, self.bind, self.vis, self.sym_obj, self.gsec,
            self.objects, self.placed, self.commons,
        )
        init, fini = self._init_fini()
        return LinkedBatch(
            objects=self.objects,
            allocation=self.allocation,
            sections=self.placed,
            definitions=BatchDefinitions(self.defs, table),
            externals=self.externals,
            got=self.got,
            stubs=self.stubs,
            got_base=self.got_base,
            tables=self.tables,
            initializers=init,
            finalizers=fini,
            kept_groups=self.kept_groups,
            segments={s.name: s for s in self.allocation.segments},
            eh_frame=self.eh_frame,
            dso_handle=int(self.addr[self.dso_ext]) if self.dso_ext is not None else 0,
            ifunc=ifunc.finish(self),
            tls=self.tls,
        )

    def _init_fini(self) -> tuple[list[tuple], list[tuple]]:
        """(priority key, order, work offset, count, reverse) per init/fini section."""
        init, fini = [], []
        objects = self.objects
        if not _has_init_or_fini(self.placed_sections):  # most batches
            return init, fini
        for order, p in enumerate(self.placed):
            s = objects[p.obj].sections[p.index]
            role = int(s.role)
            if role == _PLAIN or role == _EH:
                continue
            if role == _INIT_ARRAY or role == _CTORS:
                dest = init
            elif role == _FINI_ARRAY or role == _DTORS:
                dest = fini
            else:
                continue
            prio = s.priority if s.priority is not None else 65536
            dest.append((prio, order, p.work, s.size // 8, role == _CTORS, role == _DTORS))
        init.sort(key=lambda t: (t[0], t[1]))
        fini.sort(key=lambda t: (t[0], t[1]))
        return init, fini


def _has_init_or_fini(sections: list[Section]) -> bool:
    """Whether any of ``sections`` may be an init or fini array."""
    # Every step a C loop (no bytecode per section, which in a cold link
    # costs most): the roles gathered, and counted by list.count, which
    # tells members apart by identity (hashing an IntEnum is Python code).
    roles = list(map(_ROLE, sections))
    return roles.count(SectionRole.NORMAL) + roles.count(SectionRole.EH_FRAME) != len(roles)
