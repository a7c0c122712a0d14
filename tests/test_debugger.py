"""Debugger and profiler visibility: GDB's JIT interface and perf's map file.

The end-to-end test runs ``gdb -batch`` on a Python process that links code
which calls abort() two linked frames down; the backtrace must name the
linked functions.  Registration is automatic there because the process is
being traced.  The other tests check the in-memory image GDB reads and the
descriptor list without a debugger.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
from elftools.elf.elffile import ELFFile
from fixtures_build import REPO

import rtdyld
from rtdyld import batch_runtime, gdb_jit, perfmap

CRASH_FLAGS = ("-O2", "-fPIC")


def linked_crash(build, **options):
    ln = rtdyld.Linker(**options)
    ln.add_object(build.cxx("crash.cpp", *CRASH_FLAGS))
    return ln, ln.finalize()


def test_gdb_names_linked_functions_in_a_backtrace(build, tmp_path):
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (.ci/test-deps.sh installs it)")
    obj = build.cxx("crash.cpp", *CRASH_FLAGS)
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(f"""
        import rtdyld
        ln = rtdyld.Linker()  # no debugger=True: being traced turns it on
        ln.add_object({str(obj)!r})
        ln.finalize()
        ln.function("crash_entry", "int(int)")(5)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RTDYLD_GDB", None)
    proc = subprocess.run(
        ["gdb", "-batch", "-nx", "-ex", "run", "-ex", "bt", "--args", sys.executable, str(script)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert "SIGABRT" in proc.stdout, proc.stdout + proc.stderr
    frames = [line for line in proc.stdout.splitlines() if line.startswith("#")]
    names = [f.split(" in ", 1)[1].split(" (")[0] if " in " in f else f.split()[1] for f in frames]
    # abort() is called from crash_inner; its callers follow in order, then cffi.
    linked = [n for n in names if "crash" in n or "Worker" in n]
    assert len(linked) == 3, frames
    assert linked[0].startswith("app::crash_inner(int)"), frames  # gcc may name its cold part "[clone .cold]"
    assert linked[1:] == ["app::Worker::step(int)", "crash_entry"], frames
    i = names.index("crash_entry")
    assert any("ffi_call" in n for n in names[i + 1 :]), frames


def test_image_describes_the_batch(build):
    _, h = linked_crash(build, run_initializers=False)
    try:
        lb = h.batch
        elf = ELFFile(io.BytesIO(gdb_jit.batch_image(lb)))
        assert elf["e_type"] == "ET_REL" and elf["e_machine"] == "EM_X86_64"
        text = elf.get_section_by_name(".text")
        seg = lb.segments["text"]
        assert text["sh_addr"] == lb.allocation.target_base + seg.offset
        assert text["sh_size"] == seg.size
        assert text.data() == bytes(lb.allocation.memory[seg.offset : seg.offset + seg.size])
        eh = elf.get_section_by_name(".eh_frame")
        assert (eh["sh_addr"], eh["sh_size"]) == (lb.eh_frame.address, lb.eh_frame.size)
        symtab = elf.get_section_by_name(".symtab")
        syms = {s.name: s for s in symtab.iter_symbols() if s.name}
        for name in ("crash_entry", "_ZN3app6Worker4stepEi"):
            d = h.symbols[name]
            s = syms[name]
            assert s["st_info"]["type"] == "STT_FUNC" and s["st_info"]["bind"] == "STB_GLOBAL"
            assert text["sh_addr"] + s["st_value"] == d.address and s["st_size"] == d.size
        local = syms["_ZN3appL11crash_innerEi"]
        assert local["st_info"]["bind"] == "STB_LOCAL"
        binds = [s["st_info"]["bind"] for s in symtab.iter_symbols()][1:]
        assert binds == sorted(binds, key=lambda b: b != "STB_LOCAL")
        assert symtab["sh_info"] == 1 + binds.count("STB_LOCAL")
    finally:
        h.remove()


def entries(descriptor) -> list[int]:
    out, e = [], descriptor.first_entry
    while e != gdb_jit.ffi.NULL:
        out.append(int(gdb_jit.ffi.cast("uintptr_t", e)))
        e = e.next_entry
    return out


def test_descriptor_list_follows_batches(build):
    found = gdb_jit.interface()
    assert found is not None, "libllvmlite.so's __jit_debug_descriptor was not found"
    descriptor, _ = found
    assert descriptor.version == 1
    before = entries(descriptor)
    ln = rtdyld.Linker(debugger=True, run_initializers=False)
    ln.add_object(build.cxx("crash.cpp", *CRASH_FLAGS))
    h1 = ln.finalize()
    ln.add_module("define i32 @other() { ret i32 1 }", name="other.ll")
    h2 = ln.finalize()
    added = entries(descriptor)[: len(entries(descriptor)) - len(before)]
    assert len(added) == 2
    newest = descriptor.first_entry
    image = bytes(gdb_jit.ffi.buffer(newest.symfile_addr, newest.symfile_size))
    assert image[:4] == b"\x7fELF" and b"other\0" in image
    assert descriptor.relevant_entry == newest
    assert descriptor.action_flag == gdb_jit.JIT_NOACTION
    h1.remove()
    assert entries(descriptor) == [added[0]] + before
    assert int(gdb_jit.ffi.cast("uintptr_t", descriptor.relevant_entry)) == added[1]
    h2.remove()
    assert entries(descriptor) == before


def test_debugger_registration_is_opt_in(monkeypatch):
    monkeypatch.delenv("RTDYLD_GDB", raising=False)
    monkeypatch.delenv("RTDYLD_PERF_MAP", raising=False)
    traced = False
    monkeypatch.setattr(batch_runtime, "being_traced", lambda: traced)
    rt = batch_runtime.BatchRuntime()
    assert not rt.debugging() and not rt.perf_map
    traced = True  # a debugger attached after the session began
    assert rt.debugging()
    assert not batch_runtime.BatchRuntime(debugger=False).debugging()
    traced = False
    monkeypatch.setenv("RTDYLD_GDB", "1")
    monkeypatch.setenv("RTDYLD_PERF_MAP", "1")
    rt = batch_runtime.BatchRuntime()
    assert rt.debugging() and rt.perf_map
    assert not batch_runtime.BatchRuntime(debugger=False, perf_map=False).perf_map


def test_not_traced_under_pytest():
    assert batch_runtime.being_traced() is False


def test_tracer_check_is_reused_for_a_short_time(monkeypatch):
    """/proc/self/status is read once per interval, and a tracer attached later is seen after it."""
    reads = []
    tracer = b"0"

    def read():
        reads.append(tracer)
        return tracer

    now = 1000.0
    monkeypatch.setattr(batch_runtime, "_read_tracer_pid", read)
    monkeypatch.setattr(batch_runtime, "time", SimpleNamespace(monotonic=lambda: now))
    monkeypatch.setattr(batch_runtime, "_traced", None)
    assert not batch_runtime.being_traced()
    assert not batch_runtime.being_traced()
    assert reads == [b"0"]
    tracer = b"4242"  # a debugger attaches
    now += batch_runtime.TRACE_CHECK_INTERVAL / 2
    assert not batch_runtime.being_traced()
    now += batch_runtime.TRACE_CHECK_INTERVAL
    assert batch_runtime.being_traced()
    assert reads == [b"0", b"4242"]


def test_a_forked_child_reads_its_own_tracer():
    batch_runtime.being_traced()
    assert batch_runtime._traced is not None
    pid = os.fork()
    if pid == 0:
        os._exit(0 if batch_runtime._traced is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_perf_map_lines_from_the_command_line(build, tmp_path):
    main = tmp_path / "perfmain.c"
    main.write_text("static int helper(int x) { return x * 2; }\n"
                    "int (*volatile keep)(int) = helper;\n"
                    "int main(void) { printf(\"pid %d\\n\", getpid()); return keep(3); }\n")
    obj = build.cc(main, "-O2", "-fPIC", "-include", "stdio.h", "-include", "unistd.h")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RTDYLD_PERF_MAP", None)
    proc = subprocess.run([sys.executable, "-m", "rtdyld", "run", "--perf-map", str(obj)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 6, proc.stderr
    pid = int(proc.stdout.split()[1])
    path = perfmap.path(pid)
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    finally:
        os.unlink(path)
    fields = {line.split()[2]: line.split()[:2] for line in lines}
    assert set(fields) == {"main", "helper"}
    for start, size in fields.values():
        assert int(start, 16) > 0 and int(size, 16) > 0
        assert not start.startswith("0x")


def test_perf_map_matches_the_batch(build, monkeypatch, tmp_path):
    target = tmp_path / "perf.map"
    monkeypatch.setattr(perfmap, "path", lambda pid=None: str(target))
    _, h = linked_crash(build, perf_map=True, run_initializers=False)
    try:
        lines = target.read_text().splitlines()
        entry = h.symbols["crash_entry"]
        assert f"{entry.address:x} {entry.size:x} crash_entry" in lines
        assert any(line.endswith(" _ZN3appL11crash_innerEi") for line in lines)
    finally:
        h.remove()
    assert target.read_text().splitlines() == lines  # removal appends nothing
