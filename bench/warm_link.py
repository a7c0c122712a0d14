"""Warm links: the same program and archives linked again, in a new process, from the link cache.

For each case — a driver against Debian's libz.a, one against libbz2.a, and
one against a generated archive of ``MEMBERS`` C objects (over 20,000
relocations) — one child process links cold with an empty link cache and
fills it; then each timed run is a NEW child process that links the same
inputs warm.  The child times itself from the first input read (add_object)
until finalize has published the symbols, and reports how many batches the
cache served, so a run that was not warm is reported as such, not timed.
Each child's link is checked by calling into it (the libz and libbz2 drivers
must compress exactly like Python's zlib and bz2; the generated program must
return what Python works out).

``Linker(link_cache=DIR)`` is created before the timed region, as the peers'
engines are, and pays there what is paid once per process: the code
identity, lazily set-up library paths (cffi accessors, numpy kinds of
operation, the entry blobs' dtypes) and, as every session does, one read of
``/proc/self/status``, whose answer (is a debugger attached?) publishing
reuses for ``batch_runtime.TRACE_CHECK_INTERVAL`` (0.5 s) — so a link
started within that time of the session does not read it.  The inputs are added by path,
so the warm link finds its batch by the inputs' file identities
(:mod:`rtdyld.linkcache.by_identity`): it stats them and reads one entry.

The peers — MCJIT (``add_object_file`` + ``finalize_object``), LLJIT with
RuntimeDyld and LLJIT with JITLink — are given the program objects and
exactly the archive members rtdyld pulled, extracted beforehand to files,
and are timed under two protocols:

- new process: each timed run is a NEW child process making that peer's
  first link, timed exactly as rtdyld's warm child is: ``gc.collect()``,
  then the engine is created untimed (as ``Linker(link_cache=DIR)`` is), then
  the clock runs from the first object read until the symbols are published
  (MCJIT: ``finalize_object``; LLJIT and JITLink: the library linked with the
  entry exported, so looked up), and the link is checked by calling it.  This
  is the like-for-like comparison: both are the first link in a fresh
  process, with cold caches and code never run there before, which is what
  a user who restarts a program pays — the peers have no cache to make it
  cheaper.  The children of all engines (rtdyld warm and each peer) take
  turns round by round, in an order rotated each round, so a change in the
  machine's load falls on every engine alike; each gets ``--runs`` children.
- hot in this process: in the long-lived bench process, after a checked
  warm-up link, where LLVM's code and data are hot; the same timed region.
  It flatters the peers, so it is the conservative bound, and the one
  earlier reports used.

A peer whose child fails (a failed LLVM link can end the process), answers
wrongly or does not answer within ``CHILD_TIMEOUT`` is reported as failed,
left out of later rounds and not run in this process.  The ratio column is
rtdyld warm over the peer, medians of wall clock; the summary has one row per
protocol for each case.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import report
from .childproc import child_env, run_json, write_objects
from .cold_link import AVAILABILITY, SYSTEM_LIBS, check_link
from .cold_link import CASES as ARCHIVE_CASES
from .cold_link import _compile as compile_driver
from .engines import _llvm
from .gen import cache_dir
from .report import Row
from .session import Session
from .timing import Measurement, prepared

MEMBERS = 120
QUICK_MEMBERS = 6
CALLS = 60  # cross-member calls and global loads per member
TABLE = 80  # absolute function pointers per member: residual fixups in the warm image
GEN_VERSION = 1
MASK = (1 << 64) - 1
GEN_ARG = 7
PEERS = ("MCJIT", "LLJIT", "JITLink")
RTDYLD = "rtdyld warm, new process"
GOAL = 0.3  # rtdyld warm / MCJIT
CHILD_TIMEOUT = 120  # seconds a child may take to start, link and check before it counts as failed


@dataclass(frozen=True)
class Case:
    name: str
    programs: tuple[Path, ...]
    archives: tuple[Path, ...]
    entries: tuple[str, ...]  # symbols called by the check
    members: int = MEMBERS  # of the generated archive

    def check(self, address) -> str:
        """"ok" or what a link through ``address(name)`` got wrong."""
        if self.name == "generated":
            import cffi

            fn = cffi.FFI().cast("unsigned long(*)(unsigned long)", address("wg_run"))
            got, want = int(fn(GEN_ARG)), _generated_result(GEN_ARG, self.members)
            return "ok" if got == want else f"wg_run gave {got:#x}, not {want:#x}"
        archive_case = next(c for c in ARCHIVE_CASES if c.name == self.name)
        return check_link(archive_case, address)[1]


def run(session: Session) -> list[Row]:
    reason = _unavailable()
    if reason:
        session.note(f"warm_link skipped: {reason}")
        return []
    runs = session.options.runs
    rows = []
    for case in _cases(session):
        rows += _run_case(session, case, runs)
    return rows


def _unavailable() -> str | None:
    if shutil.which("gcc") is None or shutil.which("ar") is None:
        return "gcc and ar are needed to build the programs and the generated archive"
    return None


def _cases(session: Session) -> list[Case]:
    """libz.a, libbz2.a and the generated archive; --quick: libz.a and a small generated archive."""
    quick = session.options.quick
    cases = []
    system = (("libz.a", "zdriver.c", "libz.a", "zd_compress"), ("libbz2.a", "bzdriver.c", "libbz2.a", "bzd_compress"))
    for name, driver, archive, entry in system[:1] if quick else system:
        if (SYSTEM_LIBS / archive).exists():
            cases.append(Case(name, (_driver_object(driver),), (SYSTEM_LIBS / archive,), (entry,)))
        else:
            session.note(f"warm_link {name} skipped: not installed (sh .ci/test-deps.sh installs it)")
    members = QUICK_MEMBERS if quick else MEMBERS
    prog, ar = _generated_archive(members)
    cases.append(Case("generated", (prog,), (ar,), ("wg_run",), members))
    return cases


def _driver_object(source: str) -> Path:
    data = compile_driver(source)
    out = cache_dir() / f"warm-{hashlib.sha256(data).hexdigest()[:16]}-{Path(source).stem}.o"
    if not out.exists():
        out.write_bytes(data)
    return out


# --- the generated archive ---------------------------------------------------------------------


def _member_source(i: int, members: int) -> str:
    lines = ["extern unsigned long " + ", ".join(f"wg_g{(i + 2 * k + 1) % members}" for k in range(CALLS)) + ";"]
    lines += [f"unsigned long wg_leaf{j}(unsigned long);" for j in range(members)]
    lines += [f"unsigned long wg_g{i} = {i * 7 + 1}UL;",
              f"unsigned long wg_leaf{i}(unsigned long x) {{ return x ^ {0x9E3779B97F4A7C15 * (i + 1) & MASK:#x}UL; }}",
              f"unsigned long wg_f{i}(unsigned long x) {{", "    unsigned long acc = x;"]
    lines += [f"    acc = acc * 3 + wg_leaf{(i + k + 1) % members}(acc) + wg_g{(i + 2 * k + 1) % members};"
              for k in range(CALLS)]
    lines += ["    return acc;", "}",
              f"unsigned long (*const wg_tab{i}[])(unsigned long) = {{"
              + ", ".join(f"wg_leaf{(i * 5 + k) % members}" for k in range(TABLE)) + "};",
              f"unsigned long wg_t{i}(unsigned long x) {{",
              "    unsigned long acc = 0;",
              f"    for (int k = 0; k < {TABLE}; k++) acc = acc * 5 + wg_tab{i}[k](x + k);",
              "    return acc;", "}"]
    return "\n".join(lines) + "\n"


def _driver_source(members: int) -> str:
    decls = [f"unsigned long wg_f{i}(unsigned long); unsigned long wg_t{i}(unsigned long);" for i in range(members)]
    body = [f"    acc = acc * 31 + wg_f{i}(x) + wg_t{i}(x);" for i in range(members)]
    return "\n".join([*decls, "unsigned long wg_run(unsigned long x) {", "    unsigned long acc = 0;", *body,
                      "    return acc;", "}"]) + "\n"


def _leaf(i: int, x: int) -> int:
    return x ^ (0x9E3779B97F4A7C15 * (i + 1) & MASK)


def _generated_result(x: int, members: int) -> int:
    acc = 0
    for i in range(members):
        f = x
        for k in range(CALLS):
            f = (f * 3 + _leaf((i + k + 1) % members, f) + ((i + 2 * k + 1) % members) * 7 + 1) & MASK
        t = 0
        for k in range(TABLE):
            t = (t * 5 + _leaf((i * 5 + k) % members, (x + k) & MASK)) & MASK
        acc = (acc * 31 + f + t) & MASK
    return acc


def _generated_archive(members: int = MEMBERS) -> tuple[Path, Path]:
    """The driver object and the archive, built once and kept in the bench cache."""
    key = hashlib.sha256(f"{GEN_VERSION} {members} {CALLS} {TABLE}".encode()).hexdigest()[:16]
    d = cache_dir() / f"warm-generated-{key}"
    prog, ar = d / "wg_driver.o", d / "libwarmgen.a"
    if ar.exists() and prog.exists():
        return prog, ar
    tmp = Path(tempfile.mkdtemp(prefix="warm-generated-", dir=cache_dir()))
    flags = ["-O1", "-fPIC", "-c"]
    objs = []
    for i in range(members):
        src = tmp / f"wg{i}.c"
        src.write_text(_member_source(i, members))
        objs.append(tmp / f"wg{i}.o")
        subprocess.run(["gcc", *flags, str(src), "-o", str(objs[-1])], check=True, capture_output=True)
    (tmp / "wg_driver.c").write_text(_driver_source(members))
    subprocess.run(["gcc", *flags, str(tmp / "wg_driver.c"), "-o", str(tmp / "wg_driver.o")], check=True,
                   capture_output=True)
    subprocess.run(["ar", "rcs", str(tmp / "libwarmgen.a"), *map(str, objs)], check=True, capture_output=True)
    try:
        tmp.rename(d)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another run built it first
    return prog, ar


# --- the child processes -----------------------------------------------------------------------


def child(argv: list[str]) -> int:
    """``python -c 'from bench.warm_link import child; child(sys.argv[1:])' CACHE CASE MEMBERS PROG... -- ARCHIVE...``:
    one link with the cache, timed from the first input read; prints JSON."""
    # numpy is one of the linker's libraries, loaded before the timed region as
    # the peers' children load LLVM's: a warm batch with few residual fixups
    # never calls it (a warm ``rtdyld run`` does not import it), but one with
    # many writes them with numpy, whose set-up the cache then pays untimed.
    import numpy  # noqa: F401

    from rtdyld import Linker

    cache_dir_, name, members, rest = argv[0], argv[1], int(argv[2]), argv[3:]
    split = rest.index("--")
    programs, archives = rest[:split], rest[split + 1 :]
    case = Case(name, tuple(map(Path, programs)), tuple(map(Path, archives)), (), members)
    gc.collect()  # before the set-up, not before the clock: see timing.prepared
    s0 = time.perf_counter()
    ln = Linker(link_cache=cache_dir_)
    setup = time.perf_counter() - s0
    c0, t0 = time.process_time(), time.perf_counter()
    for p in programs:
        ln.add_object(p)
    t1 = time.perf_counter()
    for a in archives:
        ln.add_archive(a)
    t2 = time.perf_counter()
    handle = ln.finalize()
    t3, c3 = time.perf_counter(), time.process_time()
    stats = ln.link_cache.stats
    out = {
        "seconds": t3 - t0,
        "cpu": c3 - c0,
        "steps": {"add_object": t1 - t0, "add_archive": t2 - t1, "finalize": t3 - t2},
        "setup": setup,
        "warm": stats["batches"]["hits"] == 1,
        "by_identity": stats["inputs"]["hits"] == 1,
        "stored": stats["batches"]["stores"] == 1,
        "check": case.check(ln.lookup),
        "objects": handle.objects,
        "relocs": sum(len(o.relocs) for o in handle.batch.objects) if handle.batch.tables else None,
    }
    print(json.dumps(out))
    return 0


def _run_child(cache: Path, case: Case) -> dict:
    code = "import sys; from bench.warm_link import child; sys.exit(child(sys.argv[1:]))"
    args = [str(cache), case.name, str(case.members), *map(str, case.programs), "--", *map(str, case.archives)]
    env = child_env()
    env.pop("RTDYLD_LINK_CACHE", None)
    out, why = run_json(code, args, env, timeout=CHILD_TIMEOUT)
    if why is not None:
        raise RuntimeError(f"rtdyld warm link of {case.name} in a child process: {why}")
    return out


# --- peers -------------------------------------------------------------------------------------


def _pulled(case: Case) -> tuple[list[bytes], int]:
    """The bytes of the program objects and of the members rtdyld pulls, and their relocations."""
    from rtdyld import Linker

    ln = Linker(link_cache=False)
    try:
        for p in case.programs:
            ln.add_object(p)
        for a in case.archives:
            ln.add_archive(a)
        h = ln.finalize()
        b = h.batch
        members = [bytes(b.pulls[id(o)].member.data) for o in b.objects if id(o) in b.pulls]
        relocs = sum(len(o.relocs) for o in b.objects)
    finally:
        ln.close()
    return [p.read_bytes() for p in case.programs] + members, relocs


def _peer(name: str, paths: list[str], entries: tuple[str, ...]):
    """(prepare, link, address, release) for one peer over the object files ``paths``,
    which ``link`` reads."""
    llvm = _llvm()

    def machine():
        return llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small")

    if name == "MCJIT":
        def link(ee):
            for path in paths:
                with open(path, "rb") as f:
                    ee.add_object_file(llvm.ObjectFileRef.from_data(f.read()))
            ee.finalize_object()
            return ee

        return (lambda: llvm.create_mcjit_compiler(llvm.parse_assembly(""), machine()), link,
                lambda ee, s: ee.get_function_address(s), lambda ee: ee.close())

    jit_link = name == "JITLink"
    counter = iter(range(1 << 30))

    def prepare():
        return [llvm.create_lljit_compiler(machine(), use_jit_link=jit_link), None]

    def link_lljit(state):
        builder = llvm.JITLibraryBuilder()
        for path in paths:
            with open(path, "rb") as f:
                builder.add_object_img(f.read())
        builder.add_current_process()
        for e in entries:
            builder.export_symbol(e)
        state[1] = builder.link(state[0], f"warm{next(counter)}")
        return state

    def release(state):
        if state[1] is not None:
            state[1].close()
        state[0].close()

    return prepare, link_lljit, lambda state, s: state[1][s], release


def peer_child(argv: list[str]) -> int:
    """``python -c 'from bench.warm_link import peer_child; ...' PEER CASE MEMBERS ENTRIES PATH...``:
    the peer's first link in this new process, timed as :func:`child` times rtdyld's
    (``gc.collect()``, engine creation untimed, then from the first object read
    until the symbols are published) and checked by calling the entry; prints JSON."""
    name, case_name, members, entries, paths = argv[0], argv[1], int(argv[2]), tuple(argv[3].split(",")), argv[4:]
    prepare, link, address, _release = _peer(name, paths, entries)
    gc.collect()  # before the set-up, not before the clock: see timing.prepared
    s0 = time.perf_counter()
    state = prepare()
    setup = time.perf_counter() - s0
    c0, t0 = time.process_time(), time.perf_counter()
    state = link(state)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    check = Case(case_name, (), (), entries, members).check(functools.partial(address, state))
    print(json.dumps({"seconds": seconds, "cpu": cpu, "setup": setup, "check": check}))
    return 0


def _run_peer_child(name: str, case: Case, paths: list[str]) -> tuple[dict | None, str | None]:
    """One new-process link by a peer: its result, or why it failed (a failed LLVM
    link can end the process; a wrong result counts as a failure too)."""
    code = "import sys; from bench.warm_link import peer_child; sys.exit(peer_child(sys.argv[1:]))"
    out, why = run_json(code, [name, case.name, str(case.members), ",".join(case.entries), *paths],
                        timeout=CHILD_TIMEOUT)
    if why is None and out["check"] != "ok":
        return None, out["check"]
    return out, why


def _measure_peer(name: str, case: Case, paths: list[str], relocs: int, runs: int) -> Measurement:
    prepare, link, address, release = _peer(name, paths, case.entries)
    times, cpu, check = [], [], "not run"
    for i in range(1 + runs):
        state = prepared(prepare)
        try:
            c0, t0 = time.process_time(), time.perf_counter()
            state = link(state)
            elapsed, used = time.perf_counter() - t0, time.process_time() - c0
            if i == 0:
                check = case.check(functools.partial(address, state))
            else:
                times.append(elapsed)
                cpu.append(used)
        finally:
            release(state)
    return Measurement(engine=f"{name}, hot in this process", relocs=relocs, times=times, cpu=cpu, results=(0, 0),
                       check=check)


# --- one case ----------------------------------------------------------------------------------


def _run_case(session: Session, case: Case, runs: int) -> list[Row]:
    objects, relocs = _pulled(case)
    peers = []
    for name in PEERS:
        why = AVAILABILITY[name].unavailable()
        if why:
            session.note(f"{name} skipped: {why}")
        else:
            peers.append(name)
    with (tempfile.TemporaryDirectory(prefix="rtdyld-link-cache-") as cache,
          tempfile.TemporaryDirectory(prefix="rtdyld-warm-") as d):
        paths = write_objects(objects, d)
        cold = _run_child(Path(cache), case)
        if not cold["stored"]:
            session.note(f"warm_link {case.name}: the cold link stored no batch")
        warm_runs, fresh, failed = _new_process_rounds(Path(cache), case, paths, peers, runs)
        for name, why in failed.items():
            session.note(f"{name} on {case.name} failed: {why}")
        # The parent-process (hot) links come after the new-process ones, and
        # only for peers whose children linked: a failed LLVM link can end this process.
        hot = {name: _measure_peer(name, case, paths, relocs, runs) for name in peers if name not in failed}
    not_warm = [r for r in warm_runs if not r["warm"]]
    if not_warm:
        session.note(f"warm_link {case.name}: {len(not_warm)} of {runs} runs missed the cache")
    timed = [r for r in warm_runs if r["warm"]]
    by_digest = [r for r in timed if not r["by_identity"]]
    if by_digest:
        session.note(f"warm_link {case.name}: {len(by_digest)} warm runs found the batch by digest, not identity")
    bad = [r["check"] for r in [cold, *warm_runs] if r["check"] != "ok"]
    check = bad[0] if bad else "ok"
    if bad:
        session.wrong.append(f"warm_link {case.name}: {check}")
    warm = _from_children(RTDYLD, relocs, timed, check)
    steps = {k: statistics.median_low([r["steps"][k] for r in timed]) for k in timed[0]["steps"]} if timed else {}
    new = {name: _from_children(f"{name}, new process", relocs, fresh[name], "ok")
           for name in peers if name not in failed}
    cold_m = Measurement("rtdyld cold (fill run)", relocs, [cold["seconds"]], [cold["cpu"]], (0, 0), cold["check"])
    setup = {RTDYLD: [r["setup"] for r in timed]}  # engine creation in the new process, by table label
    setup.update({m.engine: [r["setup"] for r in fresh[name]] for name, m in new.items()})
    _print_table(case, objects, warm, cold_m, new, hot, failed, steps, setup)
    rows = [Row("warm_link", f"{case.name}, warm; peers in a new process", relocs, warm,
                {name: new.get(name) for name in peers}),
            Row("warm_link", f"{case.name}, warm; peers hot in the bench", relocs, warm,
                {name: hot.get(name) for name in peers})]
    for row, where in zip(rows, ("peers in a new process", "peers hot in the bench")):
        shown, measured = report.peer_ratios(warm, row.peers, "MCJIT")
        session.goal(f"warm link <= {GOAL}x MCJIT", f"{case.name}, {where}", measured,
                     None if shown is None else shown <= GOAL)
    return rows


def _new_process_rounds(cache: Path, case: Case, paths: list[str], peers: list[str], runs: int):
    """``runs`` rounds of one new process per engine: rtdyld's warm link and each
    peer's first link, in an order rotated each round so that a change in the
    machine's load falls on every engine alike.  Returns rtdyld's results, each
    peer's and, for peers whose child failed (then left out of later rounds), why."""
    order = [RTDYLD, *peers]
    warm_runs: list[dict] = []
    fresh: dict[str, list[dict]] = {name: [] for name in peers}
    failed: dict[str, str] = {}
    for r in range(runs):
        for name in order[r % len(order):] + order[: r % len(order)]:
            if name == RTDYLD:
                warm_runs.append(_run_child(cache, case))
            elif name not in failed:
                out, why = _run_peer_child(name, case, paths)
                if why is None:
                    fresh[name].append(out)
                else:
                    failed[name] = why
    return warm_runs, fresh, failed


def _from_children(engine: str, relocs: int, results: list[dict], check: str) -> Measurement:
    return Measurement(engine, relocs, [r["seconds"] for r in results], [r["cpu"] for r in results], (0, 0), check)


def _print_table(case: Case, objects, warm: Measurement, cold: Measurement, new, hot, failed, steps, setup) -> None:
    headers = ["engine", "runs", "median ms", "min ms", "cpu ms", "warm/engine", "(cpu)", "set-up ms (untimed)",
               "check"]
    lines = []
    for m in (warm, cold, *new.values(), *hot.values()):
        ok = bool(m.times) and bool(warm.times)
        lines.append([m.engine, str(len(m.times)), report.timing(m) if m.times else report.MISSING,
                      report.ms(m.best) if m.times else report.MISSING,
                      report.ms(m.cpu_median) if m.cpu else report.MISSING,
                      f"{warm.median / m.median:.2f}" if ok else report.MISSING,
                      f"{warm.cpu_median / m.cpu_median:.2f}" if ok and m.cpu_median else report.MISSING,
                      report.ms(statistics.median_low(setup[m.engine])) if setup.get(m.engine) else report.MISSING,
                      m.check])
    for name, why in failed.items():
        lines.append([name, "0", *[report.MISSING] * 6, f"failed: {why}"])
    title = (f"warm_link: {case.name} ({len(objects)} objects: the program and the members pulled, "
             f"{warm.relocs} relocations; new process = one link per new process, engine creation untimed, "
             f"rounds interleaved; hot = links in this process after a warm-up)")
    print(report.table(headers, lines, title))
    if steps:
        print("rtdyld warm, median per step: " + ", ".join(f"{k} {report.ms(v)} ms" for k, v in steps.items()))
    print("(set-up: Linker(link_cache=DIR), or the peer's engine, created in the new process before the timed "
          "link; rtdyld's includes the once-per-process priming of lazily initialised libraries)")
    print()
