"""Cold links of programs against static archives: rtdyld against MCJIT, LLJIT and JITLink.

Cases: a small program against Debian's libz.a and libbz2.a (and both), and
a generated archive of 120 members and some 30,000 relocations whose
members each pull in the next (:mod:`bench.gen_archive`).  rtdyld is given
the program object and the archives, as ``rtdyld run prog.o libz.a`` would
be, and timed from the first input read until its symbols are published;
every timed run is a new Linker, so the archive indexes are read again and
lazy extraction decides again which members to load.  The peers cannot read
archives: they are handed object files, the program's and (a) exactly the
members rtdyld pulled or (b, MCJIT only) every member of the archives.  The
member bytes are extracted before timing; turning bytes into LLVM object
files is timed, as reading them is for rtdyld.  MCJIT is ``add_object_file``
of each object and ``finalize_object``; LLJIT and JITLink (LLJIT with
``use_jit_link``) link the objects as one JITLibraryBuilder library.

The engines take turns: after a checked warm-up link each, every round
times one link per engine, in an order rotated each round, so a busy
machine slows every engine alike instead of skewing one ratio.  A full
run times ``3 × --runs`` rounds (fewer if they would exceed the budget).

Each engine's first link is checked by calling the program through it: the
drivers compress a buffer, which must equal what Python's zlib and bz2 make;
the generated program's checksum must equal the one worked out in Python.
A peer link that cannot resolve a symbol may end the process inside LLVM,
so each peer variant is first tried in a child process; one that fails
there is reported as ``failed: reason`` and not timed.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import itertools
import os
import random
import statistics
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import childproc, gen_archive, report
from .childproc import REPO, write_objects
from .engines import LLJIT, MCJIT, _LLJITSession, _llvm
from .gen import cache_dir
from .report import Row
from .session import Session
from .timing import Measurement, prepared

DRIVERS = REPO / "fixtures" / "archive_link"
SYSTEM_LIBS = Path("/usr/lib/x86_64-linux-gnu")
CFLAGS = ("-O2", "-fPIE")
SAMPLE_SIZE = 64 * 1024
ZLIB_LEVEL = 6
BZ2_BLOCK_SIZE = 9
PEER = "MCJIT"
GOAL = 1.0  # rtdyld/MCJIT
GENERATED = "generated.a"


@dataclass(frozen=True)
class Case:
    name: str
    drivers: tuple[str, ...]  # C files in fixtures/archive_link
    archives: tuple[str, ...]  # file names in SYSTEM_LIBS


CASES = (
    Case("libz.a", ("zdriver.c",), ("libz.a",)),
    Case("libbz2.a", ("bzdriver.c",), ("libbz2.a",)),
    Case("libz.a + libbz2.a", ("zdriver.c", "bzdriver.c"), ("libz.a", "libbz2.a")),
    Case(GENERATED, (), ()),
)


@dataclass
class Inputs:
    """What one case links: the program objects and the archives, and MCJIT's object lists."""

    case: Case
    programs: list[tuple[str, bytes]]
    archives: list[Path]
    pulled: list[bytes]  # the members rtdyld loads, in its order
    every: list[bytes]  # every member of the archives
    relocs: dict[str, int]  # relocations in each object list: "rtdyld", "pulled", "all"


def run(session: Session) -> list[Row]:
    rows: list[Row] = []
    for case in CASES:
        reason = _unavailable(case)
        if reason:
            session.note(f"cold_link {case.name} skipped: {reason}")
            continue
        rows += _run_case(session, _inputs(case))
    return rows


def _unavailable(case: Case) -> str | None:
    if case.name == GENERATED:
        try:
            import llvmlite.binding  # noqa: F401
        except ImportError:
            return "llvmlite is needed to compile the generated archive"
        tool, why = "ar", "to build the generated archive"
    else:
        missing = [name for name in case.archives if not (SYSTEM_LIBS / name).exists()]
        if missing:
            return f"{', '.join(missing)} not installed (sh .ci/test-deps.sh installs them)"
        tool, why = "gcc", "to compile the driver programs"
    try:
        subprocess.run([tool, "--version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return f"{tool} is needed {why}"
    return None


# --- inputs ------------------------------------------------------------------------------


def _compile(source: str) -> bytes:
    src = DRIVERS / source
    text = src.read_bytes()
    key = hashlib.sha256(text + "\0".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / f"archives-{src.stem}-{key}.o"
    if not out.exists():
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["gcc", "-c", *CFLAGS, str(src), "-o", str(tmp)], check=True, capture_output=True)
        tmp.replace(out)
    return out.read_bytes()


def _inputs(case: Case) -> Inputs:
    from rtdyld import Linker
    from rtdyld.inputs import parse_object
    from rtdyld.objfile.archive import read_archive

    if case.name == GENERATED:
        generated = gen_archive.make_archive()
        programs, archives = [("gen_prog.o", generated.program)], [generated.archive]
    else:
        programs = [(f"{Path(d).stem}.o", _compile(d)) for d in case.drivers]
        archives = [SYSTEM_LIBS / a for a in case.archives]
    ln = Linker()
    try:
        handle = _link_rtdyld(ln, programs, archives)
        pulled = [bytes(handle.batch.pulls[id(o)].member.data) for o in handle.batch.objects
                  if id(o) in handle.batch.pulls]
        rtdyld_relocs = sum(len(o.relocs) for o in handle.batch.objects)
    finally:
        ln.close()
    every = [bytes(m.data) for a in archives for m in read_archive(a).members]

    def relocs(objects: list[bytes]) -> int:
        return sum(len(parse_object(d, "<member>").relocs) for d in objects)

    program_relocs = relocs([d for _, d in programs])
    counts = {
        "rtdyld": rtdyld_relocs,
        "pulled": program_relocs + relocs(pulled),
        "all": program_relocs + relocs(every),
    }
    return Inputs(case, programs, archives, pulled, every, counts)


# --- checking a link through its drivers ---------------------------------------------------------


def _sample() -> bytes:
    rng = random.Random(2024)
    words = ("archive", "member", "symbol", "index", "lazy", "extraction", "relocation", "section", "deflate")
    text = " ".join(rng.choice(words) for _ in range(SAMPLE_SIZE // 6)).encode()
    return text[: SAMPLE_SIZE // 2] + rng.randbytes(SAMPLE_SIZE // 2)


def check_link(case: Case, address: Callable[[str], int]) -> tuple[tuple[int, int], str]:
    """Compress the sample through the linked drivers: the output sizes, and
    "ok" or what differed from Python's zlib/bz2."""
    import cffi

    ffi = cffi.FFI()
    data = _sample()
    cap = len(data) + len(data) // 100 + 1024
    sizes, wrong = [0, 0], []
    if case.name == GENERATED:
        got = int(ffi.cast("uint64_t(*)(uint64_t)", address(gen_archive.ENTRY))(gen_archive.SEED_ARG))
        want = gen_archive.make_archive().expected_check
        return (got, 0), "ok" if got == want else f"{gen_archive.ENTRY} returned {got:#x}, expected {want:#x}"
    if "zdriver.c" in case.drivers:
        fn = ffi.cast("long(*)(unsigned char *, unsigned long, unsigned char *, unsigned long, int)",
                      address("zd_compress"))
        out = bytearray(cap)
        n = fn(ffi.from_buffer("unsigned char[]", out), cap, ffi.from_buffer("unsigned char[]", data), len(data),
               ZLIB_LEVEL)
        sizes[0] = n
        if n < 0 or bytes(out[:n]) != zlib.compress(data, ZLIB_LEVEL):
            wrong.append(f"compress2 gave {n} bytes unlike zlib.compress")
    if "bzdriver.c" in case.drivers:
        fn = ffi.cast("long(*)(char *, unsigned int, char *, unsigned int, int)", address("bzd_compress"))
        out = bytearray(cap)
        n = fn(ffi.from_buffer(out), cap, ffi.from_buffer(data), len(data), BZ2_BLOCK_SIZE)
        sizes[1] = n
        if n < 0 or bytes(out[:n]) != bz2.compress(data, BZ2_BLOCK_SIZE):
            wrong.append(f"BZ2_bzBuffToBuffCompress gave {n} bytes unlike bz2.compress")
    return (sizes[0], sizes[1]), "; ".join(wrong) or "ok"


# --- the engines ----------------------------------------------------------------------------------


def _link_rtdyld(ln, programs: list[tuple[str, bytes]], archives: list[Path]):
    for name, data in programs:
        ln.add_object(data, name=name)
    for path in archives:
        ln.add_archive(path)
    return ln.finalize()


@dataclass
class _Timed:
    """One engine on one case: make a session (untimed), link (timed), look up, release (untimed)."""

    prepare: Callable[[], object]
    link: Callable[[object], object]
    address: Callable[[object, str], int]
    release: Callable[[object], None]


def _rtdyld(inputs: Inputs) -> _Timed:
    from rtdyld import Linker

    return _Timed(
        prepare=Linker,
        link=lambda ln: _link_rtdyld(ln, inputs.programs, inputs.archives),
        address=lambda ln, name: ln.lookup(name),
        release=lambda ln: ln.close(),
    )


def _mcjit(objects: list[bytes], exports: list[str]) -> _Timed:
    llvm = _llvm()

    def prepare():
        tm = llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small")
        return llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)

    def link(ee) -> None:
        for data in objects:
            ee.add_object_file(llvm.ObjectFileRef.from_data(data))
        ee.finalize_object()

    return _Timed(prepare, link, lambda ee, name: ee.get_function_address(name), lambda ee: ee.close())


def _lljit(objects: list[bytes], exports: list[str], jit_link: bool) -> _Timed:
    llvm = _llvm()
    names = itertools.count()

    def prepare():
        tm = llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small")
        return _LLJITSession(llvm.create_lljit_compiler(tm, use_jit_link=jit_link), tm)

    def link(state) -> None:
        builder = llvm.JITLibraryBuilder()
        for data in objects:
            builder.add_object_img(data)
        builder.add_current_process()
        for name in exports:
            builder.export_symbol(name)
        state.tracker = builder.link(state.jit, f"cold{next(names)}")

    def release(state) -> None:
        if state.tracker is not None:
            state.tracker.close()
        state.jit.close()

    return _Timed(prepare, link, lambda state, name: state.tracker[name], release)


# Peer engines by name: (objects, exported entry points) -> how to time it.
PEERS: dict[str, Callable[[list[bytes], list[str]], _Timed]] = {
    "MCJIT": _mcjit,
    "LLJIT": functools.partial(_lljit, jit_link=False),
    "JITLink": functools.partial(_lljit, jit_link=True),
}
AVAILABILITY = {"MCJIT": MCJIT(), "LLJIT": LLJIT(jit_link=False), "JITLink": LLJIT(jit_link=True)}


ROUNDS_PER_RUN = 3  # interleaved rounds per --runs in a full run: small links are quick and noisy


def _link_once(timed: _Timed, state) -> tuple[float, float]:
    """Wall and CPU seconds of one link into a session :func:`.timing.prepared` made."""
    c0, t0 = time.process_time(), time.perf_counter()
    timed.link(state)
    return time.perf_counter() - t0, time.process_time() - c0


def _measure_interleaved(engines: dict[str, tuple[_Timed, int]], case: Case, rounds: int,
                         budget: float) -> dict[str, Measurement]:
    """Each engine's checked warm-up link, then up to ``rounds`` rounds of one
    timed link per engine, each in a new session.

    The engines take turns (in an order rotated each round) rather than one
    after another, so a change in the machine's load during the case shows in
    every engine's times alike instead of in one engine's ratio."""
    checks: dict[str, tuple[tuple[int, int], str]] = {}
    round_time = 0.0
    for label, (timed, _) in engines.items():
        state = prepared(timed.prepare)
        try:
            elapsed, _ = _link_once(timed, state)
            checks[label] = check_link(case, functools.partial(timed.address, state))
        finally:
            timed.release(state)
        round_time += elapsed
    rounds = max(1, min(rounds, int(budget * len(engines) / max(round_time, 1e-9))))
    times: dict[str, list[float]] = {label: [] for label in engines}
    cpu: dict[str, list[float]] = {label: [] for label in engines}
    order = list(engines)
    for r in range(rounds):
        for label in order[r % len(order):] + order[: r % len(order)]:
            timed = engines[label][0]
            state = prepared(timed.prepare)
            try:
                elapsed, used = _link_once(timed, state)
            finally:
                timed.release(state)
            times[label].append(elapsed)
            cpu[label].append(used)
    return {
        label: Measurement(engine=label, relocs=relocs, times=times[label], cpu=cpu[label],
                           results=checks[label][0], check=checks[label][1])
        for label, (_, relocs) in engines.items()
    }


def _probe(engine: str, case: Case, objects: list[bytes]) -> str | None:
    """Link with a peer in a child process first: None if it links and runs, else why not."""
    with tempfile.TemporaryDirectory(prefix="rtdyld-bench-") as d:
        code = "import sys; from bench.cold_link import probe; sys.exit(probe(sys.argv[1], sys.argv[2], sys.argv[3:]))"
        return childproc.probe(code, [engine, case.name, *write_objects(objects, d)])


def probe(engine: str, case_name: str, paths: list[str]) -> int:
    """The child side of :func:`_probe`: link ``paths`` with ``engine`` and check the program."""
    case = next(c for c in CASES if c.name == case_name)
    timed = PEERS[engine]([Path(p).read_bytes() for p in paths], _entries(case))
    state = timed.prepare()
    timed.link(state)
    missing = [s for s in _entries(case) if not timed.address(state, s)]
    if missing:
        print(f"{', '.join(missing)} not found after linking")
        return 1
    _, check = check_link(case, functools.partial(timed.address, state))
    print(check)
    return 0 if check == "ok" else 1


def _entries(case: Case) -> list[str]:
    if case.name == GENERATED:
        return [gen_archive.ENTRY]
    return [{"zdriver.c": "zd_compress", "bzdriver.c": "bzd_compress"}[d] for d in case.drivers]


# --- the case ---------------------------------------------------------------------------------------


def _run_case(session: Session, inputs: Inputs) -> list[Row]:
    opts = session.options
    case = inputs.case
    programs = [d for _, d in inputs.programs]
    given = {"pulled": programs + inputs.pulled, "all": programs + inputs.every}
    # (peer, which members): every peer gets what rtdyld pulled; MCJIT every member too.
    variants = [(name, "pulled") for name in PEERS] + [(PEER, "all")]
    engines: dict[str, tuple[_Timed, int]] = {"rtdyld": (_rtdyld(inputs), inputs.relocs["rtdyld"])}
    peers: dict[tuple[str, str], Measurement | str | None] = {}
    for engine, members in variants:
        label = _label(engine, members)
        reason = AVAILABILITY[engine].unavailable()
        if reason:
            peers[engine, members] = None
            session.note(f"{engine} skipped: {reason}")
            continue
        objects = given[members]
        failed = _probe(engine, case, objects)
        if failed:
            peers[engine, members] = f"failed: {failed}"
            session.note(f"{label} on {case.name} failed: {failed}")
            continue
        peers[engine, members] = label  # measured below
        engines[label] = (PEERS[engine](objects, _entries(case)), inputs.relocs[members])
    rounds = opts.runs if opts.quick else opts.runs * ROUNDS_PER_RUN
    measured = _measure_interleaved(engines, case, rounds, opts.budget)
    rt = measured["rtdyld"]
    if not rt.ok:
        session.wrong.append(f"{case.name}: {rt.check}")
    for key, m in peers.items():
        if isinstance(m, str) and m in measured:
            peers[key] = measured[m]
            if not peers[key].ok:
                session.note(f"{m} linked {case.name} wrongly: {peers[key].check}")
    print(report.table(*_table(inputs, rt, given, peers), _title(inputs)))
    print()
    pulled = {engine: m if isinstance(m, Measurement) else None for (engine, members), m in peers.items()
              if members == "pulled"}
    shown, measured = report.peer_ratios(rt, pulled, PEER)
    session.goal(f"cold link <= {GOAL}x {PEER}", case.name, measured, None if shown is None else shown <= GOAL)
    return [Row("cold_link", f"{case.name} (peers given the pulled members)", rt.relocs, rt, pulled)]


def _label(engine: str, members: str) -> str:
    return f"{engine}, {'the members rtdyld pulled' if members == 'pulled' else 'every member'}"


def _title(inputs: Inputs) -> str:
    c = inputs.case
    program = " + ".join(c.drivers) or "gen_prog.o"
    return (
        f"cold_link: {program} against {c.name} (a new session per run; "
        f"rtdyld pulls {len(inputs.pulled)} of {len(inputs.every)} members)"
    )


def _table(inputs: Inputs, rt: Measurement, given, peers) -> tuple[list[str], list[list[str]]]:
    headers = ["engine", "objects", "relocs", "runs", "median ms", "min ms", "cpu ms", "rtdyld/engine",
               "rtdyld/engine cpu", "check"]
    lines = [_line("rtdyld (program + archives)", f"{len(inputs.programs)} + {len(inputs.pulled)}", rt, rt)]
    for (engine, members), m in peers.items():
        label = _label(engine, members)
        objects = given[members]
        if isinstance(m, Measurement):
            lines.append(_line(label, str(len(objects)), m, rt))
        else:
            dash = report.MISSING
            lines.append([label, str(len(objects)), str(inputs.relocs[members]), "0", dash, dash, dash, dash, dash,
                          m or "skipped"])
    return headers, lines


def _line(label: str, objects: str, m: Measurement, rt: Measurement) -> list[str]:
    timed = bool(m.times) and bool(rt.times)
    dash = report.MISSING
    return [
        label,
        objects,
        str(m.relocs),
        str(len(m.times)),
        report.timing(m) if m.times else dash,
        report.ms(min(m.times)) if m.times else dash,
        report.ms(statistics.median_low(m.cpu)) if m.cpu else dash,
        f"{statistics.median_low(rt.times) / statistics.median_low(m.times):.2f}" if timed else dash,
        f"{statistics.median_low(rt.cpu) / statistics.median_low(m.cpu):.2f}" if timed else dash,
        m.check,
    ]
