"""Start-up: ``rtdyld run`` on a small object, in a new process, against ``python -c pass``.

Each command runs ``runs`` times in a fresh interpreter after one warm-up
round (which fills the page cache, the bytecode cache and the link cache);
the commands take turns, so the machine's load falls on all alike, and each
run's CPU time (the child's user + system) is reported beside its wall time.
``rtdyld run --stats`` reports its own link time (``link_s``), so start-up
is the process's wall time less the link: what the goal compares with
``python -c pass``.  It is measured twice: linking cold, as a first run
does, and from a link cache the warm-up round filled (``--link-cache``, as
``RTDYLD_LINK_CACHE`` sets it), as every later run of the same object does;
that run loads neither the batch linker nor numpy.  ``import numpy,
_cffi_backend`` (the floor of a cold link, numpy with one BLAS thread as
``rtdyld run`` loads it; the cffi package itself is not imported, the C
declarations being pre-parsed), ``import argparse, _cffi_backend`` (the
floor of any command line that calls C through cffi) and ``from rtdyld
import Linker`` are timed too.  ``rtdyld run`` is run as the installed
command runs it (see ``RTDYLD``), not as ``python -m rtdyld``.  What
``python -c pass`` itself imports is counted, with the
third-party packages among them: a ``.pth`` file in site-packages can import
one at every start-up and so inflate the baseline.  So the baseline, the
floor and both runs are also timed under ``python -S``, which reads no
``.pth`` file (site-packages is put on ``PYTHONPATH`` instead): the
interpreter's own start-up, as on a machine whose site-packages imports
nothing.  One run of each ``rtdyld run`` lists the heavy optional packages
it imported: there should be none (capstone is for traces and checks,
llvmlite for IR inputs, pyelftools for nothing on the link path, pycparser
for nothing at all), and from the link cache not numpy either.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from . import report
from .childproc import REPO, child_env
from .gen import _atomic_write, cache_dir
from .report import Row
from .session import Session
from .timing import Measurement

HEAVY = ("capstone", "llvmlite", "elftools", "pycparser", "cffi", "hypothesis", "numpy.ma")
HEAVY_WHEN_CACHED = (*HEAVY, "numpy")
GOAL = 1.5
SMALL_IR = """\
define i32 @main(i32 %argc, ptr %argv) {
  ret i32 0
}
"""
STATS = ("command", "cached")
BARE = " -S"
# The installed ``rtdyld`` command is the script pip writes for the
# [project.scripts] entry: it imports re and sys and calls console_main.  The
# runs do the same from the source tree; ``python -m rtdyld`` would also
# import runpy and what it needs (importlib.util, contextlib), which the
# command does not.
RTDYLD = ["-c", "import re, sys\nfrom rtdyld.cli import console_main\nsys.exit(console_main())"]


def run(session: Session) -> list[Row]:
    obj = _small_object()
    runs = max(3, session.options.runs * (2 if session.options.quick else 3))
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="rtdyld-startup-") as link_cache:
        base = {
            "plain": ["-c", "pass"],
            "floor": ["-c", "import numpy, _cffi_backend"],
            "minimal": ["-c", "import argparse, _cffi_backend"],
            "imported": ["-c", "from rtdyld import Linker"],
            "command": [*RTDYLD, "run", "--stats", str(obj)],
            "cached": [*RTDYLD, "run", "--stats", "--link-cache", link_cache, str(obj)],
        }
        commands = {k: ([python, *argv], _env(floor=k == "floor")) for k, argv in base.items()}
        # The same without site's start-up files (-S; site-packages on the path instead):
        # what python -c pass costs where no .pth file imports anything.
        commands |= {k + BARE: ([python, "-S", *base[k]], _env(floor=k == "floor", bare=True))
                     for k in ("plain", "floor", "minimal", *STATS)}
        wall, cpu, links = _time(commands, runs, stats=(*STATS, *(k + BARE for k in STATS)))
        heavy = {"command": _heavy_imports(obj, None, HEAVY), "cached": _heavy_imports(obj, link_cache,
                                                                                     HEAVY_WHEN_CACHED)}
    count, third_party = _baseline_modules()
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    link = {k: statistics.median(v) for k, v in links.items()}
    headers = ["command", "runs", "median ms", "min ms", "cpu ms"]
    labels = {
        "plain": "python -c pass",
        "floor": "python -c 'import numpy, _cffi_backend'",
        "minimal": "python -c 'import argparse, _cffi_backend'",
        "imported": "python -c 'from rtdyld import Linker'",
        "command": "rtdyld run --stats small.o",
        "cached": "rtdyld run --stats --link-cache DIR small.o",
    }
    labels |= {k + BARE: f"{labels[k]}, python -S" for k in ("plain", "floor", "minimal", *STATS)}
    lines = []
    for k in commands:
        lines.append([labels[k], str(runs), report.ms(med[k]), report.ms(min(wall[k])), report.ms(cpu_med[k])])
        if k in links:
            lines.append(["  of which link_s", str(runs), report.ms(link[k]), report.ms(min(links[k])), ""])
    print(report.table(headers, lines, "startup: a new process per run, the commands taking turns "
                                       "(numpy with one BLAS thread, as rtdyld run loads it)"))
    for suffix, where in (("", ""), (BARE, "; python -S")):
        plain, cpu_plain = med["plain" + suffix], cpu_med["plain" + suffix]
        for k, how in (("command", "linking cold"), ("cached", "from the link cache, a repeated run")):
            k += suffix
            ratio, cpu_ratio = (med[k] - link[k]) / plain, (cpu_med[k] - link[k]) / cpu_plain
            verdict = "meets" if report.within(ratio, GOAL) else "misses"
            print(f"start-up {how}{where} (run less link_s) = {ratio:.2f}x python -c pass "
                  f"(CPU time: {cpu_ratio:.2f}x); the goal is <= {GOAL}x, which this {verdict}.")
            session.goal(f"start-up <= {GOAL}x python -c pass + link", f"rtdyld run small.o, {how}{where}",
                         f"{ratio:.2f}x", verdict == "meets")
        print(f"importing numpy and _cffi_backend alone (what a cold link needs){where}: "
              f"{med['floor' + suffix] / plain:.2f}x python -c pass; argparse and _cffi_backend alone "
              f"(what any command line calling C through cffi needs): {med['minimal' + suffix] / plain:.2f}x.")
    print(
        f"python -c pass imports {count} modules here"
        + (f", among them third-party {', '.join(third_party)} (from a .pth file in site-packages; "
           f"python -S runs none: {report.ms(med['plain' + BARE])} ms against {report.ms(med['plain'])} ms)"
           if third_party else ", none of them third-party")
        + ".\n"
        f"heavy packages imported by 'rtdyld run': {', '.join(heavy['command']) or 'none'}; "
        f"from the link cache: {', '.join(heavy['cached']) or 'none'}\n"
    )
    for k in STATS:
        if heavy[k]:
            session.note(f"{labels[k]} imported {', '.join(heavy[k])}")
    return [Row("startup", f"{labels[k]}: process wall time", 0,
                Measurement("rtdyld", 0, wall[k], cpu[k], (0, 0), "ok"), {}) for k in STATS]


def _small_object() -> Path:
    import llvmlite.binding as llvm

    path = cache_dir() / f"startup-main-{'.'.join(map(str, llvm.llvm_version_info))}.o"
    if not path.exists():
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        tm = llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small")
        _atomic_write(path, tm.emit_object(llvm.parse_assembly(SMALL_IR)))
    return path


def _env(floor: bool = False, bare: bool = False) -> dict[str, str]:
    # Bytecode is cached (outside the source tree) as an installed package's
    # would be, even where PYTHONDONTWRITEBYTECODE is set: otherwise every run
    # compiles rtdyld from source, which is not start-up as users see it.
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir() / "pycache")
    if floor:
        # As 'rtdyld run' imports numpy (rtdyld.cli): OpenBLAS with one thread, not one per core.
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
    if bare:
        # python -S reads no .pth file: site-packages goes on the path by hand.
        paths = sysconfig.get_paths()
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], *dict.fromkeys((paths["purelib"], paths["platlib"]))])
    return env


def _time(commands: dict[str, tuple[list[str], dict]], runs: int, stats) -> tuple[dict, dict, dict[str, list[float]]]:
    """Wall and CPU seconds per run of each command after one warm-up round,
    and ``link_s`` per run of each command named in ``stats``.

    The commands take turns, in an order rotated each round, so a change in
    the machine's load falls on all of them alike.  CPU time is the child's
    user + system time."""
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    links: dict[str, list[float]] = {k: [] for k in stats}
    order = list(commands)
    for i in range(runs + 1):
        for key in order[i % len(order):] + order[: i % len(order)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            argv, env = commands[key]
            proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=True)
            elapsed = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if not i:
                continue
            wall[key].append(elapsed)
            cpu[key].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if key in links:
                last = proc.stderr.strip().splitlines()[-1]
                links[key].append(float(last.removeprefix("link_s=")))
    return wall, cpu, links


def _heavy_imports(obj: Path, link_cache: str | None, heavy: tuple[str, ...]) -> list[str]:
    cache = ["--link-cache", link_cache] if link_cache else []
    code = (
        "import sys\n"
        "from rtdyld.cli import main\n"
        f"main(['run', *{cache!r}, {str(obj)!r}])\n"
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True, text=True,
                          check=True)
    return proc.stdout.split()


def _baseline_modules() -> tuple[int, list[str]]:
    """How many modules ``python -c pass`` imports, and the third-party
    packages among them."""
    code = ("import sys\n"
            "top = {m.partition('.')[0] for m in sys.modules}\n"
            "print(len(sys.modules), *sorted(t for t in top if t not in sys.stdlib_module_names and t != '__main__'))\n")
    count, *third_party = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True,
                                         text=True, check=True).stdout.split()
    return int(count), third_party
