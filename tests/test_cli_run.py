"""`rtdyld run`: link objects and IR, call main(argc, argv), exit with its status."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from cli_helpers import rtdyld_subprocess
from fixtures_build import C_FLAG_SETS, FIXTURES, REPO

PIE = C_FLAG_SETS["O2-pie"]


def rtdyld_run(*args: str) -> subprocess.CompletedProcess:
    return rtdyld_subprocess("run", *args)


def assert_error_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rtdyld: error: "), lines[0]
    for word in words:
        assert word in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def prog(build):
    return [build.cc("prog/main.c", *PIE), build.cc("prog/util.c", *PIE)]


def test_run_passes_argv_and_returns_status(prog):
    proc = rtdyld_run(*prog, "--", "x", "yy")
    assert proc.stdout == "argc=3\nargv[1]=x\nargv[2]=yy\nargv0=set argv_end=null\n"
    assert proc.stderr == "hello from util.c\n"
    assert proc.returncode == 40 + len("x") + len("yy")


def test_run_without_arguments(prog):
    proc = rtdyld_run(*prog)
    assert proc.stdout == "argc=1\nargv0=set argv_end=null\n"
    assert proc.returncode == 40


def test_run_arguments_that_look_like_options(prog):
    proc = rtdyld_run(*prog, "--", "-l", "--entry")
    assert proc.stdout.startswith("argc=3\nargv[1]=-l\nargv[2]=--entry\n")
    assert proc.returncode == 40 + 2 + 7


def test_run_entry(prog):
    proc = rtdyld_run("--entry", "alt_main", *prog, "--", "a")
    assert proc.stdout == "alt_main argc=2\n"
    assert proc.returncode == 5


def test_run_ir_quickstart():
    proc = rtdyld_run("fixtures/hello.ll")
    assert proc.stdout == "hello from rtdyld!\n"
    assert proc.returncode == 0


def test_run_bitcode(build):
    proc = rtdyld_run(build.bitcode_path(FIXTURES / "hello.ll"))
    assert proc.stdout == "hello from rtdyld!\n"
    assert proc.returncode == 0


def test_run_with_libm(build):
    proc = rtdyld_run("-l", "m", build.cc("prog/cosine.c", *PIE), "--", "0.5")
    assert proc.stdout == "cos=0.877583\n", proc.stderr
    assert proc.returncode == 0


def test_run_with_library_directory(build):
    lib = build.shared_lib("prog/twice_lib.c", "rtdyldtwice")
    proc = rtdyld_run("-L", lib.parent, "-l", "rtdyldtwice", build.cc("prog/use_twice.c", *PIE))
    assert proc.stdout == "twice=42\n", proc.stderr
    assert proc.returncode == 0


def test_run_runs_destructors(build):
    proc = rtdyld_run(build.cc("prog/fini.c", *PIE))
    assert proc.stdout == "fini ran\n"
    assert proc.returncode == 0


def test_run_runs_destructors_when_the_session_is_collected_before_exit(build):
    """The destructors run when main returns, so a garbage collection between
    the command and the interpreter's exit cannot take them with the session."""
    obj = build.cc("prog/fini.c", *PIE)
    code = ("import gc, sys\nfrom rtdyld.cli import main\n"
            f"status = main(['run', {str(obj)!r}])\ngc.collect()\nsys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert (proc.stdout, proc.returncode) == ("fini ran\n", 0)


UNFLUSHED = r"""
#include <stdio.h>
__attribute__((destructor)) static void last(void) { printf("|destructor"); }
int main(void) { printf("main, unflushed"); fprintf(stderr, "to stderr"); return 261; }
"""


def test_the_command_ends_as_exit_would_with_every_stream_flushed(build):
    """The process ends without the interpreter's teardown, as a C program's
    exit() ends it: the program's buffered output (stdout is a pipe here, so
    fully buffered) and its destructors' reach the pipe, after the --stats
    lines, and the status is main's, as the kernel truncates it."""
    proc = rtdyld_run("--stats", build.cc_text(UNFLUSHED, *PIE, stem="unflushed"))
    assert proc.stdout == "main, unflushed|destructor"
    assert proc.stderr.endswith("\nto stderr") and proc.stderr.splitlines()[-2].startswith("link_s=")
    assert proc.returncode == 261 & 0xFF


def test_exit_now_runs_the_exit_handlers_and_flushes_python_streams():
    code = ("import atexit, sys\nfrom rtdyld.cli import exit_now\n"
            "atexit.register(lambda: print('handler ran'))\n"
            "print('unflushed', end='')\nsys.stderr.write('err')\nexit_now(300)\nprint('not reached')\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert (proc.stdout, proc.stderr, proc.returncode) == ("unflushedhandler ran\n", "err", 300 & 0xFF)


def test_a_profiled_command_exits_normally_so_the_profiler_reports(build):
    cmd = [sys.executable, "-m", "cProfile", "-s", "tottime", "-m", "rtdyld", "run",
           build.cc_text(UNFLUSHED, *PIE, stem="unflushed")]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    # (cProfile reports the program's output, then its own; it swallows the exit status.)
    assert proc.stdout.startswith("main, unflushed|destructor") and "function calls" in proc.stdout


def test_error_undefined_symbol(build):
    obj = build.cc("prog/undefined.c", *PIE)
    assert_error_line(rtdyld_run(obj), "not_defined_anywhere")


def test_error_missing_input(tmp_path):
    missing = tmp_path / "no-such-object.o"
    assert_error_line(rtdyld_run(missing), str(missing))


def test_error_missing_library(prog):
    assert_error_line(rtdyld_run("-l", "rtdyld_no_such_library", *prog), "rtdyld_no_such_library")


def test_error_malformed_input(tmp_path):
    bad = tmp_path / "garbage.o"
    bad.write_bytes(b"\x7fELF" + bytes(20))
    assert_error_line(rtdyld_run(bad), str(bad))


def test_debug_shows_traceback(build):
    proc = rtdyld_run("--debug", build.cc("prog/undefined.c", *PIE))
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "UndefinedSymbolError" in proc.stderr
    assert "not_defined_anywhere" in proc.stderr


STAT_LINE = r"^(?P<name>[a-z]+)_s=(?P<seconds>\d+\.\d{6})$"


def test_run_stats_prints_phase_times_then_link_time(prog):
    proc = rtdyld_run("--stats", "--entry", "alt_main", *prog, "--", "a")
    assert proc.stdout == "alt_main argc=2\n"
    assert proc.returncode == 5
    lines = proc.stderr.splitlines()
    stats = {}
    for line in lines:
        m = re.match(STAT_LINE, line)
        assert m, f"not a NAME_s=SECONDS line: {line!r}"
        stats[m["name"]] = float(m["seconds"])
    assert lines[-1] == f"link_s={stats['link']:.6f}"
    assert list(stats)[-2:] == ["other", "link"]
    for phase in ("read", "resolve", "fixup", "publish"):
        assert phase in stats, proc.stderr
    phases = [v for k, v in stats.items() if k != "link"]
    assert abs(sum(phases) - stats["link"]) < 1e-5 * len(phases)
    assert stats["link"] > 0


def test_run_without_stats_prints_no_times(prog):
    proc = rtdyld_run("--entry", "alt_main", *prog, "--", "a")
    assert proc.stderr == ""


# What 'rtdyld run' on plain objects must not import: capstone is for traces
# and checks, llvmlite for IR inputs, pyelftools for nothing on the link path,
# the cffi package (and its pycparser) for nothing, the C declarations being
# pre-parsed, and each optional part of rtdyld for the sessions that use it.
NOT_IMPORTED_BY_RUN = (
    "capstone", "llvmlite", "elftools", "pycparser", "cffi", "numpy.ma",
    "ctypes.util", "subprocess", "json", "hashlib", "secrets", "difflib",
    "rtdyld.cache", "rtdyld.linkcache", "rtdyld.tls_module", "rtdyld.elf_dso", "rtdyld.gdb_jit",
    "rtdyld.perfmap", "rtdyld.lazy", "rtdyld.hotswap", "rtdyld.compile_callbacks", "rtdyld.trace",
    "rtdyld.symmap", "rtdyld.mapfile", "rtdyld.check", "rtdyld.checkenv", "rtdyld.objfile.macho",
    "rtdyld.irmodule", "rtdyld.asm", "rtdyld.ffigen", "rtdyld.cdecls",
)


def _modules_after(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``python -m rtdyld ARGS`` in a new process; also every module it had imported when it exited."""
    record = tmp_path / "modules.txt"
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(record)!r}, 'w').write('\\n'.join(sorted(sys.modules))))\n"
        "sys.argv[0] = 'rtdyld'\n"
        "runpy.run_module('rtdyld', run_name='__main__', alter_sys=True)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code, *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    return proc, set(record.read_text().split())


def test_run_on_objects_imports_only_what_linking_needs(prog, tmp_path):
    proc, imported = _modules_after(tmp_path, "run", "--entry", "alt_main", *map(str, prog), "--", "a")
    assert (proc.returncode, proc.stdout) == (5, "alt_main argc=2\n"), proc.stderr
    assert {"numpy", "_cffi_backend", "rtdyld.linker", "memmgr.libc"} <= imported  # the link's own imports
    assert sorted(imported.intersection(NOT_IMPORTED_BY_RUN)) == []


@pytest.mark.parametrize("columns", ["50", "200", "", "junk", "-3"])
def test_help_width_is_the_one_argparse_would_take(monkeypatch, columns):
    """The parsers are given the width argparse works out through shutil
    (COLUMNS, else the terminal's, else 80; less 2), without importing it."""
    import argparse

    from rtdyld import cli

    monkeypatch.setenv("COLUMNS", columns)
    assert cli._help_width() == argparse.HelpFormatter("rtdyld")._width
    assert cli.build_parser("run")._get_formatter()._width == cli._help_width()


def test_help_and_usage_errors_do_not_load_the_linker(tmp_path):
    proc, imported = _modules_after(tmp_path, "--help")
    assert proc.returncode == 0 and "subcommands:" in proc.stdout
    assert not {"numpy", "rtdyld.linker"} & imported
    proc, imported = _modules_after(tmp_path, "run", "--no-such-option", "x.o")
    assert proc.returncode == 1 and "unrecognized arguments: --no-such-option" in proc.stderr
    assert not {"numpy", "rtdyld.linker"} & imported
