"""The benchmarks run end to end on tiny objects and print their tables.

Nothing here looks at how long anything took: only that every benchmark ran,
that rtdyld's links gave the right results, and that the summary has a ratio
against a peer measured in the same run.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RATIO = re.compile(r"^\d+\.\d\d$")
VERDICTS = ("met", "MISSED", "—")
# The benchmarks that link generated objects, and so honour --max-relocs.
BENCHMARKS = ("link_object", "scaling")


def table_after(title: str, out: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table printed under ``title``; columns split on runs of spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    header = re.split(r"\s{2,}", lines[start + 1].strip())
    assert set(lines[start + 2].replace(" ", "")) == {"-"}, lines[start + 2]
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip() or line.startswith(("note:", "error:")):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return header, rows


def goal_rows(out: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(goal, case) -> (measured, verdict), from the goals table at the end."""
    header, rows = table_after("Goals", out)
    assert header == ["goal", "case", "measured", "verdict"], header
    assert all(len(r) == 4 and r[3] in VERDICTS for r in rows), rows
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def run_bench(tmp_path, *args: str, timeout: int) -> str:
    """The output of ``python -m bench --quick --runs 1 ARGS``, its cache in ``tmp_path``; it must exit 0."""
    env = {**os.environ, "RTDYLD_BENCH_CACHE": str(tmp_path)}
    env.pop("RTDYLD_LINK_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--runs", "1", *args],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quick_run_prints_summary_with_ratios(tmp_path):
    out = run_bench(
        tmp_path, "--max-relocs", "2000", *[arg for name in BENCHMARKS for arg in ("--only", name)], timeout=300
    )
    assert "WRONG" not in out and "error:" not in out, out

    header, rows = table_after("link_object:", out)
    engines = {r[0]: r for r in rows}
    assert engines["rtdyld"][header.index("check")] == "ok", out
    assert "MCJIT" in engines, out

    header, rows = table_after("Summary", out)
    assert header[:4] == ["benchmark", "case", "relocs", "rtdyld ms"], header
    assert "rtdyld/MCJIT" in header, header
    assert {r[0] for r in rows} == set(BENCHMARKS), rows
    for row in rows:
        assert len(row) == len(header), (header, row)
        assert RATIO.match(row[header.index("rtdyld/MCJIT")]), (header, row)

    goals = goal_rows(out)
    assert goals["fixup >= 5.00M relocations/s", "200000 relocations"] == ("not run at this size", "—"), goals
    measured, verdict = goals["time linear in relocations", "1000-2000 relocations"]
    assert re.fullmatch(r"µs per relocation: \d+\.\d\d, \d+\.\d\d", measured) and verdict == "—", goals
    measured, verdict = goals["memory <= 1.1x sections + a page per segment", "1000-2000 relocations"]
    low, high = map(float, re.fullmatch(r"(\d\.\d{3})-(\d\.\d{3})x", measured).groups())
    assert low <= high and verdict == ("met" if high <= 1.1 else "MISSED"), goals


def test_generated_object_has_the_requested_relocation_count(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDYLD_BENCH_CACHE", str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import gen

    made = gen.make(1_500)
    assert gen.count_relocs(made.data) == made.relocs == 1_500
    assert gen.make_object(1_500) == made.data  # from the cache, same bytes


def test_stubs_benchmark_quick_run_prints_both_tables(tmp_path):
    out = run_bench(tmp_path, "--only", "stubs", timeout=300)
    assert "error:" not in out, out
    header, rows = table_after("stubs: loop(", out)
    assert header[:4] == ["call site", "callee", "direct ms", "stub ms"], header
    assert [r[:2] for r in rows] == [
        [site, callee] for site in ("call bump@PLT", "call *bump@GOTPCREL") for callee in ("add", "xorshift x3")
    ], rows
    assert all(RATIO.match(r[header.index("stub/direct")]) for r in rows), rows
    header, rows = table_after("stubs: first calls", out)
    assert [r[0] for r in rows][:2] == ["compile (IR -> object, llvmlite)", "link + resolver (rest of the call)"]


def test_generated_archive_links_every_member_and_checks(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDYLD_BENCH_CACHE", str(tmp_path))
    monkeypatch.syspath_prepend(str(ROOT))
    import rtdyld
    from bench import gen_archive

    made = gen_archive.make_archive(members=4, functions=3)
    ln = rtdyld.Linker()
    try:
        ln.add_object(made.program, name="gen_prog.o")
        ln.add_archive(made.archive)
        handle = ln.finalize()
        assert len(handle.batch.pulls) == 4
        check = ln.function(gen_archive.ENTRY, "uint64_t(uint64_t)")
        assert check(gen_archive.SEED_ARG) == made.expected_check
    finally:
        ln.close()


def test_warm_link_quick_run_links_warm_and_checks(tmp_path):
    """rtdyld's warm link and each peer's first link, each in new processes, and
    the peers' links in the bench process: all checked, both ratios summarised."""
    out = run_bench(tmp_path, "--only", "warm_link", timeout=600)
    assert "WRONG" not in out and "error:" not in out and "missed the cache" not in out, out
    assert "the cold link stored no batch" not in out, out
    header, rows = table_after("warm_link: generated", out)
    engines = {r[0]: r for r in rows}
    warm = engines["rtdyld warm, new process"]
    assert warm[header.index("runs")] == "1", out  # the one timed run was served by the cache
    assert warm[header.index("check")] == "ok", out
    assert engines["rtdyld cold (fill run)"][header.index("check")] == "ok", out
    for protocol in ("new process", "hot in this process"):
        mcjit = engines[f"MCJIT, {protocol}"]
        assert mcjit[header.index("check")] == "ok", out
        assert mcjit[header.index("runs")] == warm[header.index("runs")], out
        assert RATIO.match(mcjit[header.index("warm/engine")]), out
    # the new-process rows say what their untimed engine creation took, as rtdyld's does
    assert re.match(r"^\d+\.\d$", engines["MCJIT, new process"][header.index("set-up ms (untimed)")]), out
    assert re.match(r"^\d+\.\d$", warm[header.index("set-up ms (untimed)")]), out

    header, rows = table_after("Summary", out)
    cases = {r[1]: r for r in rows}
    for case in ("generated, warm; peers in a new process", "generated, warm; peers hot in the bench"):
        assert case in cases, rows
        assert RATIO.match(cases[case][header.index("rtdyld/MCJIT")]), rows

    goals = goal_rows(out)
    for where in ("peers in a new process", "peers hot in the bench"):
        measured, verdict = goals["warm link <= 0.3x MCJIT", f"generated, {where}"]
        ratio = float(re.fullmatch(r"(\d+\.\d\d)x MCJIT( \((LLJIT|JITLink) \d+\.\d\dx(, JITLink \d+\.\d\dx)?\))?",
                                   measured)[1])
        assert verdict == ("met" if ratio <= 0.3 else "MISSED"), goals


def test_warm_link_peer_child_that_fails_or_hangs_is_reported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import childproc, warm_link

    bogus = tmp_path / "0.o"
    bogus.write_bytes(b"\x7fELF not an object")
    case = warm_link.Case("generated", (), (), ("wg_run",), 1)
    out, why = warm_link._run_peer_child("MCJIT", case, [str(bogus)])
    assert out is None and why, why
    assert childproc.run_json("import time; time.sleep(30)", [], timeout=0.5) == (None, "no answer within 0.5 s")
    assert childproc.run_json("print('no json')", []) == (None, "printed no result: no json")


@pytest.mark.slow
def test_cold_link_times_every_engine_in_the_same_rounds(tmp_path):
    """The cold-link benchmark links each case with every engine, checks each
    link by calling it, and times them in interleaved rounds: one run each."""
    out = run_bench(tmp_path, "--only", "cold_link", timeout=600)
    assert "WRONG" not in out and "error:" not in out, out
    for title in ("cold_link: zdriver.c against libz.a", "cold_link: gen_prog.o against generated.a"):
        header, rows = table_after(title, out)
        engines = {r[0]: r for r in rows}
        rt = engines["rtdyld (program + archives)"]
        assert rt[header.index("check")] == "ok", out
        assert rt[header.index("runs")] == "1", out
        mcjit = engines["MCJIT, the members rtdyld pulled"]
        assert mcjit[header.index("check")] == "ok", out
        assert mcjit[header.index("runs")] == rt[header.index("runs")], out
        assert RATIO.match(mcjit[header.index("rtdyld/engine")]), out
    goals = goal_rows(out)
    for case in ("libz.a", "libbz2.a", "libz.a + libbz2.a", "generated.a"):
        measured, verdict = goals["cold link <= 1.0x MCJIT", case]
        ratio = float(re.match(r"(\d+\.\d\d)x MCJIT", measured)[1])
        assert verdict == ("met" if ratio <= 1.0 else "MISSED"), goals


def test_repeated_links_leave_nothing_for_the_collector(tmp_path):
    """Repeated links in one process: every engine links each case in the
    same rounds, rtdyld's links are checked, and a closed rtdyld session
    leaves no object that only the cyclic garbage collector could free."""
    out = run_bench(tmp_path, "--only", "repeated", timeout=600)
    assert "WRONG" not in out and "error:" not in out, out
    for title in ("repeated: zdriver.c + bzdriver.c against libz.a + libbz2.a", "repeated: gen_prog.o against generated.a"):
        header, rows = table_after(title, out)
        engines = {r[0]: r for r in rows}
        rt, mcjit = engines["rtdyld"], engines["MCJIT"]
        assert rt[header.index("check")] == "ok", out
        assert rt[header.index("left per session")] == "0", out
        assert rt[header.index("runs")] == mcjit[header.index("runs")] == "5", out
        assert RATIO.match(mcjit[header.index("rtdyld/engine (mean)")]), out
        assert re.fullmatch(r"\d+\.\d", rt[header.index("collector ms per link")]), out
    header, rows = table_after("Summary", out)
    assert [r[1] for r in rows] == ["libz.a + libbz2.a (no forced collection)", "generated.a (no forced collection)"]


def test_startup_times_each_command_in_turn_and_imports_nothing_heavy(tmp_path):
    out = run_bench(tmp_path, "--only", "startup", timeout=300)
    header, rows = table_after("startup:", out)
    rows = rows[:15]  # the verdict lines follow the table
    assert header == ["command", "runs", "median ms", "min ms", "cpu ms"], header
    commands = [r[0] for r in rows]
    cold, cached = "rtdyld run --stats small.o", "rtdyld run --stats --link-cache DIR small.o"
    floor, minimal = "python -c 'import numpy, _cffi_backend'", "python -c 'import argparse, _cffi_backend'"
    assert commands == ["python -c pass", floor, minimal,
                        "python -c 'from rtdyld import Linker'", cold, "of which link_s", cached, "of which link_s",
                        "python -c pass, python -S", f"{floor}, python -S", f"{minimal}, python -S",
                        f"{cold}, python -S", "of which link_s", f"{cached}, python -S", "of which link_s"], commands
    assert len({r[1] for r in rows}) == 1, rows  # every command ran as often
    goals = goal_rows(out)
    for how in ("linking cold", "from the link cache, a repeated run"):
        for where in ("", "; python -S"):
            said = re.search(rf"start-up {how}{where} \(run less link_s\) = (\d+\.\d\d)x python -c pass "
                             rf"\(CPU time: \d+\.\d\dx\); the goal is <= 1.5x, which this (meets|misses)\.", out)
            assert said, out
            assert goals["start-up <= 1.5x python -c pass + link", f"rtdyld run small.o, {how}{where}"] == (
                f"{said[1]}x", "met" if said[2] == "meets" else "MISSED"), goals
    for where in ("", "; python -S"):
        assert re.search(rf"importing numpy and _cffi_backend alone \(what a cold link needs\){where}: "
                         rf"\d+\.\d\dx python -c pass; argparse and _cffi_backend alone \(what any command "
                         rf"line calling C through cffi needs\): \d+\.\d\dx\.", out), out
    assert re.search(r"python -c pass imports \d+ modules here", out), out
    assert "heavy packages imported by 'rtdyld run': none; from the link cache: none" in out, out


def _gc_and_timed_link_events(path: str, monkeypatch, capsys) -> list[str]:
    """What one timed path did, in order: "collect" (gc.collect), "prepare"
    (the engine's set-up) and "link" (the timed link), with fake engines."""
    import gc
    from types import SimpleNamespace

    from bench import cold_link, timing, warm_link

    events: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *a: events.append("collect"))

    def prepare(*_):
        events.append("prepare")
        return [None]

    def link(state, *_):
        events.append("link")
        return state

    if path == "timing.measure":  # link_object, scaling
        engine = SimpleNamespace(name="fake", prepare=prepare, link=link, release=lambda state: None,
                                 run_checks=lambda state: (1, 1), instrument=lambda: contextlib.nullcontext(None))
        gen = SimpleNamespace(name="gen", relocs=1, expected_check=1, expected_pad_ok=1)
        assert timing.measure(engine, gen, runs=3, budget=10.0).ok
    elif path == "cold_link":
        monkeypatch.setattr(cold_link, "check_link", lambda case, address: ((0, 0), "ok"))
        engines = {label: (cold_link._Timed(prepare, link, lambda state, name: 0, lambda state: None), 1)
                   for label in ("rtdyld", "MCJIT")}
        cold_link._measure_interleaved(engines, None, rounds=2, budget=10.0)
    elif path == "warm_link hot peers":
        monkeypatch.setattr(warm_link, "_peer", lambda *a: (prepare, link, lambda state, s: 0, lambda state: None))
        monkeypatch.setattr(warm_link.Case, "check", lambda self, address: "ok")
        warm_link._measure_peer("MCJIT", warm_link.Case("generated", (), (), ("wg_run",), 1), [], 1, runs=2)
    elif path == "warm_link peer child":
        monkeypatch.setattr(warm_link, "_peer", lambda *a: (prepare, link, lambda state, s: 0, lambda state: None))
        monkeypatch.setattr(warm_link.Case, "check", lambda self, address: "ok")
        warm_link.peer_child(["MCJIT", "generated", "1", "wg_run"])
    else:  # rtdyld's warm child
        import rtdyld

        class Linker:
            def __init__(self, link_cache):
                prepare()
                self.link_cache = SimpleNamespace(stats={"batches": {"hits": 1, "stores": 0}, "inputs": {"hits": 1}})

            def add_object(self, path):
                link(None)

            add_archive = add_object

            def finalize(self):
                return SimpleNamespace(objects=2, batch=SimpleNamespace(tables=None))

            def lookup(self, name):
                return 0

        monkeypatch.setattr(rtdyld, "Linker", Linker)
        monkeypatch.setattr(warm_link.Case, "check", lambda self, address: "ok")
        warm_link.child(["cache", "generated", "1", "prog.o", "--", "lib.a"])
    capsys.readouterr()
    return events


@pytest.mark.parametrize("path", ["timing.measure", "cold_link", "warm_link hot peers", "warm_link peer child",
                                  "warm_link child"])
def test_every_timed_link_follows_a_collection_and_the_set_up_with_no_collection_between(path, monkeypatch,
                                                                                         capsys):
    """Each timed path of every engine: a full collection, then the engine's
    untimed set-up, then the timed link (bench.timing.prepared), never a
    collection between the set-up and the link."""
    monkeypatch.syspath_prepend(str(ROOT))
    events = _gc_and_timed_link_events(path, monkeypatch, capsys)
    steps = [e for i, e in enumerate(events) if not (e == "link" and events[i - 1] == "link")]  # one per link
    assert steps and steps == ["collect", "prepare", "link"] * (len(steps) // 3), events


def test_a_ratio_goal_is_judged_as_shown_and_without_a_good_peer_has_no_verdict(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import report
    from bench.report import Goal
    from bench.timing import Measurement

    def linked(median: float | None, check: str = "ok") -> Measurement:
        times = [] if median is None else [median]
        return Measurement("engine", 1, times, times, (0, 0), check)

    mcjit = linked(1.0)
    # 0.3049 shows as 0.30 and meets "<= 0.3"; 0.3051 shows as 0.31 and does not.
    assert report.peer_ratios(linked(0.3049), {"MCJIT": mcjit, "LLJIT": linked(0.5), "JITLink": None}, "MCJIT") == (
        0.3, "0.30x MCJIT (LLJIT 0.61x)")
    assert report.peer_ratios(linked(0.3051), {"MCJIT": mcjit}, "MCJIT")[0] == 0.31
    for rt, peers, why in ((linked(0.2), {}, "MCJIT not measured (see the notes)"),
                           (linked(0.2), {"MCJIT": None}, "MCJIT not measured (see the notes)"),
                           (linked(0.2), {"MCJIT": linked(1.0, "bench_check returned 0x1")}, "MCJIT linked wrongly"),
                           (linked(0.2), {"MCJIT": linked(None)}, "no timed runs"),
                           (linked(0.2, "bench_check returned 0x1"), {"MCJIT": mcjit}, "rtdyld linked wrongly")):
        assert report.peer_ratios(rt, peers, "MCJIT") == (None, why)
    table = report.goals([Goal("warm", "a", "0.30x MCJIT", True), Goal("warm", "b", "0.31x MCJIT", False),
                          Goal("warm", "c", "MCJIT linked wrongly", None)])
    assert goal_rows(table) == {("warm", "a"): ("0.30x MCJIT", "met"), ("warm", "b"): ("0.31x MCJIT", "MISSED"),
                                ("warm", "c"): ("MCJIT linked wrongly", "—")}


def test_fixup_and_memory_goals_are_judged_as_shown_and_not_on_a_wrong_link(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from types import SimpleNamespace

    from bench import scaling
    from bench.phases import FIXUP
    from bench.report import Row
    from bench.timing import Measurement
    from memmgr import libc

    def verdicts(fixup_rate: float, memory_ratio: float, check: str = "ok", sizes=(1000, scaling.FIXUP_CASE)) -> dict:
        goals = {}
        session = SimpleNamespace(goal=lambda goal, case, measured, met: goals.__setitem__(goal, (measured, met)))
        rows = [Row("scaling", "pic/small", r, Measurement("rtdyld", r, [r * 1e-7], [r * 1e-7], (0, 0), check,
                                                           {FIXUP: r / fixup_rate}))
                for r in sizes]
        whole = 100 * libc.PAGE_SIZE  # sections plus a page per segment
        memory = [(1000, round(whole * memory_ratio), whole - 2 * libc.PAGE_SIZE, 2)]
        scaling._goals(session, rows, memory)
        assert scaling._memory(memory)[1][0][-1] == {True: "ok", False: "MISSED"}[goals[next(
            g for g in goals if g.startswith("memory"))][1]]  # the table's verdict is the goal's
        return {goal.split()[0]: v for goal, v in goals.items()}

    got = verdicts(4.996e6, 1.1004)
    assert got["fixup"] == ("5.00M/s", True) and got["memory"] == ("1.100-1.100x", True), got
    assert got["time"][1] is None
    got = verdicts(4.994e6, 1.1006)
    assert got["fixup"] == ("4.99M/s", False) and got["memory"] == ("1.101-1.101x", False), got
    assert verdicts(9e6, 1.0, check="bench_check returned 0x1")["fixup"] == ("rtdyld linked wrongly", None)
    assert verdicts(9e6, 1.0, sizes=(1000, 5000))["fixup"] == ("not run at this size", None)


def test_stub_goal_is_judged_as_shown_and_not_on_a_wrong_link(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    from bench import stubs
    from bench.session import Options, Session

    ratios = {("call bump@PLT", "add"): 1.104, ("call bump@PLT", "xorshift x3"): 1.106,
              ("call *bump@GOTPCREL", "add"): 1.0}
    wrong = ("call *bump@GOTPCREL", "add")
    monkeypatch.setattr(stubs, "measure", lambda quick, runs: {"ratios": ratios, "wrong": ["stubs: loop wrong"],
                                                                "linked_wrongly": {wrong}})
    session = Session(Options(quick=True), engines=[])
    assert stubs.run(session) == []
    assert {g.case: (g.measured, g.met) for g in session.goals} == {
        "call bump@PLT, add callee": ("1.10x", True), "call bump@PLT, xorshift x3 callee": ("1.11x", False),
        "call *bump@GOTPCREL, add callee": ("rtdyld linked wrongly", None)}
    assert session.wrong == ["stubs: loop wrong"]
