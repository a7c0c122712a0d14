"""Start-up: ``rtdyld run`` on a small object, in a new process, against ``python -c pass``.

Each command runs ``runs`` times in a fresh interpreter after one warm-up
round (which fills the page cache and the bytecode cache); the commands take
turns, so the machine's load falls on all alike, and each run's CPU time
(the child's user + system) is reported beside its wall time.  ``rtdyld run --stats`` reports its own link
time (``link_s``), so start-up is the process's wall time less the link:
what the goal compares with ``python -c pass``.  ``import numpy,
_cffi_backend`` (the floor: every link needs both; the cffi package itself
is not imported, the C declarations being pre-parsed) and ``from rtdyld
import Linker`` are timed too, and one run of the command lists the heavy
optional packages it imported: there should be none (capstone is for traces
and checks, llvmlite for IR inputs, pyelftools for nothing on the link path,
pycparser for nothing at all).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import report
from .childproc import REPO, child_env
from .gen import _atomic_write, cache_dir
from .report import Row
from .session import Session
from .timing import Measurement

HEAVY = ("capstone", "llvmlite", "elftools", "pycparser", "cffi", "hypothesis", "numpy.ma")
GOAL = 1.5
SMALL_IR = """\
define i32 @main(i32 %argc, ptr %argv) {
  ret i32 0
}
"""


def run(session: Session) -> list[Row]:
    obj = _small_object()
    runs = max(3, session.options.runs * (2 if session.options.quick else 3))
    python = sys.executable
    commands = {
        "plain": [python, "-c", "pass"],
        "floor": [python, "-c", "import numpy, _cffi_backend"],
        "imported": [python, "-c", "from rtdyld import Linker"],
        "command": [python, "-m", "rtdyld", "run", "--stats", str(obj)],
    }
    wall, cpu, links = _time(commands, runs, stats="command")
    link = statistics.median(links)
    med = {k: statistics.median(v) for k, v in wall.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
    startup = med["command"] - link
    ratio = startup / med["plain"]
    cpu_ratio = (cpu_med["command"] - link) / cpu_med["plain"]
    heavy = _heavy_imports(obj)
    headers = ["command", "runs", "median ms", "min ms", "cpu ms"]
    labels = {
        "plain": "python -c pass",
        "floor": "python -c 'import numpy, _cffi_backend'",
        "imported": "python -c 'from rtdyld import Linker'",
        "command": "rtdyld run --stats small.o",
    }
    lines = [[labels[k], str(runs), report.ms(med[k]), report.ms(min(wall[k])), report.ms(cpu_med[k])]
             for k in commands]
    lines.append(["  of which link_s", str(runs), report.ms(link), report.ms(min(links)), ""])
    print(report.table(headers, lines, "startup: a new process per run, the commands taking turns"))
    verdict = "meets" if ratio <= GOAL else "misses"
    print(
        f"start-up (run less link_s) = {ratio:.2f}x python -c pass (CPU time: {cpu_ratio:.2f}x); "
        f"the goal is <= {GOAL}x, which this {verdict}.\n"
        f"importing numpy and _cffi_backend alone, which every link needs, is "
        f"{med['floor'] / med['plain']:.2f}x python -c pass; rtdyld's start-up is "
        f"{startup / med['floor']:.2f}x that, {report.ms(startup - med['floor'])} ms above it.\n"
        f"heavy packages imported by 'rtdyld run': {', '.join(heavy) or 'none'}\n"
    )
    if heavy:
        session.note(f"rtdyld run imported {', '.join(heavy)}")
    m = Measurement("rtdyld", 0, wall["command"], cpu["command"], (0, 0), "ok")
    return [Row("startup", "rtdyld run small.o: process wall time", 0, m, {})]


def _small_object() -> Path:
    import llvmlite.binding as llvm

    path = cache_dir() / f"startup-main-{'.'.join(map(str, llvm.llvm_version_info))}.o"
    if not path.exists():
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        tm = llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small")
        _atomic_write(path, tm.emit_object(llvm.parse_assembly(SMALL_IR)))
    return path


def _env() -> dict[str, str]:
    # Bytecode is cached (outside the source tree) as an installed package's
    # would be, even where PYTHONDONTWRITEBYTECODE is set: otherwise every run
    # compiles rtdyld from source, which is not start-up as users see it.
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache_dir() / "pycache")
    return env


def _time(commands: dict[str, list[str]], runs: int, stats: str) -> tuple[dict, dict, list[float]]:
    """Wall and CPU seconds per run of each command after one warm-up round,
    and ``link_s`` per run of the command named ``stats``.

    The commands take turns, in an order rotated each round, so a change in
    the machine's load falls on all of them alike.  CPU time is the child's
    user + system time."""
    wall: dict[str, list[float]] = {k: [] for k in commands}
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    links: list[float] = []
    order = list(commands)
    for i in range(runs + 1):
        for key in order[i % len(order):] + order[: i % len(order)]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(commands[key], env=_env(), cwd=REPO, capture_output=True, text=True, check=True)
            elapsed = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if not i:
                continue
            wall[key].append(elapsed)
            cpu[key].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
            if key == stats:
                last = proc.stderr.strip().splitlines()[-1]
                links.append(float(last.removeprefix("link_s=")))
    return wall, cpu, links


def _heavy_imports(obj: Path) -> list[str]:
    code = (
        "import sys\n"
        "from rtdyld.cli import main\n"
        f"main(['run', {str(obj)!r}])\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), cwd=REPO, capture_output=True, text=True,
                          check=True)
    return proc.stdout.split()
