"""Start-up: ``rtdyld run`` on a small object, in a new process, against ``python -c pass``.

Each command runs ``runs`` times in a fresh interpreter after one warm-up
(which fills the page cache and the bytecode cache).  ``rtdyld run --stats`` reports its own link
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
    plain, _ = _time([python, "-c", "pass"], runs)
    floor, _ = _time([python, "-c", "import numpy, _cffi_backend"], runs)
    imported, _ = _time([python, "-c", "from rtdyld import Linker"], runs)
    command, links = _time([python, "-m", "rtdyld", "run", "--stats", str(obj)], runs, stats=True)
    link = statistics.median(links)
    startup = statistics.median(command) - link
    ratio = startup / statistics.median(plain)
    heavy = _heavy_imports(obj)
    headers = ["command", "runs", "median ms", "min ms"]
    lines = [
        ["python -c pass", str(runs), report.ms(statistics.median(plain)), report.ms(min(plain))],
        ["python -c 'import numpy, _cffi_backend'", str(runs), report.ms(statistics.median(floor)),
         report.ms(min(floor))],
        ["python -c 'from rtdyld import Linker'", str(runs), report.ms(statistics.median(imported)),
         report.ms(min(imported))],
        ["rtdyld run --stats small.o", str(runs), report.ms(statistics.median(command)), report.ms(min(command))],
        ["  of which link_s", str(runs), report.ms(link), report.ms(min(links))],
    ]
    print(report.table(headers, lines, "startup: a new process per run"))
    verdict = "meets" if ratio <= GOAL else "misses"
    print(
        f"start-up (run less link_s) = {ratio:.2f}x python -c pass; the goal is <= {GOAL}x, which this {verdict}.\n"
        f"importing numpy and _cffi_backend alone, which every link needs, is "
        f"{statistics.median(floor) / statistics.median(plain):.2f}x python -c pass; rtdyld's start-up is "
        f"{startup / statistics.median(floor):.2f}x that, {report.ms(startup - statistics.median(floor))} ms above it.\n"
        f"heavy packages imported by 'rtdyld run': {', '.join(heavy) or 'none'}\n"
    )
    if heavy:
        session.note(f"rtdyld run imported {', '.join(heavy)}")
    m = Measurement("rtdyld", 0, command, command, (0, 0), "ok")
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


def _time(cmd: list[str], runs: int, stats: bool = False) -> tuple[list[float], list[float]]:
    """Wall seconds per run after one warm-up, and link_s per run if ``stats``."""
    times, links = [], []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), cwd=REPO, capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - t0
        if i:
            times.append(elapsed)
            if stats:
                last = proc.stderr.strip().splitlines()[-1]
                links.append(float(last.removeprefix("link_s=")))
    return times, links


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
