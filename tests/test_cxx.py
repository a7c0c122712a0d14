"""C++ objects from g++ -O2: exceptions across linked frames and batches,
COMDAT deduplication, static initialisers and destructors, unwind tables.

Fixtures are in fixtures/cxx and built at test time, position-independent
(-fPIC) and with the compiler's default (PIE on this platform).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest
from cffi import FFI
from fixtures_build import REPO

import rtdyld
from rtdyld import unwind
from rtdyld.objfile.model import SymType

ffi = FFI()
MODELS = {"pic": ("-O2", "-fPIC"), "default": ("-O2",)}


@pytest.fixture(params=sorted(MODELS))
def flags(request):
    return MODELS[request.param]


def new_linker() -> rtdyld.Linker:
    ln = rtdyld.Linker()
    ln.link_library("stdc++")
    return ln


def ints(*values):
    return ffi.new("int[]", list(values)), len(values)


def test_exception_thrown_in_one_object_is_caught_in_another(build, flags):
    ln = new_linker()
    ln.add_object(build.cxx("shapes_a.cpp", *flags))
    ln.add_object(build.cxx("shapes_b.cpp", *flags))
    h = ln.finalize()
    try:
        checked = ln.function("shapes_checked_sum", "int(int *, int)")
        assert checked(*ints(1, 2, 3)) == 1 + 2 + 3 + 1 + 4 - 4  # + scaled(0) + scaled(1) - 4
        assert checked(*ints(1, -7, 3)) == -1000 - (-7)
        assert checked(*ints(-42)) == -1000 + 42
        # The template and inline functions are instantiated in both objects;
        # one copy of each COMDAT group is linked.
        assert "_ZN11AccumulatorIiE3addEi" in h.symbols
        assert "_ZTI10ShapeError" in h.symbols
        assert "DW.ref.__gxx_personality_v0" in h.batch.kept_groups
        texts = [p for p in h.batch.sections
                 if h.batch.objects[p.obj].sections[p.index].name == ".text._ZN11AccumulatorIiE3addEi"]
        assert len(texts) == 1
    finally:
        h.remove()


def test_exception_crosses_three_batches(build, flags):
    """Thrown in batch 1, through a frame with a cleanup in batch 2, caught in batch 3."""
    ln = new_linker()
    handles = []
    for name in ("shapes_a.cpp", "rethrow.cpp", "catcher.cpp"):
        ln.add_object(build.cxx(name, *flags))
        handles.append(ln.finalize())
    try:
        catch = ln.function("relay_catch", "int(int *, int)")
        assert catch(*ints(1, 2, 3)) == 6 + 1 + 7 - 7
        assert catch(*ints(5, -3)) == -2000 - ord("n")
        # The second batch's copies of the shared template were dropped: it
        # uses the first batch's, and so depends on it.
        assert "_ZN11AccumulatorIiE3addEi" not in handles[1].symbols
        assert handles[1] in handles[0].dependents
    finally:
        ln.close()


def test_exceptions_after_unload_and_reload(build):
    """Removal deregisters the unwind tables (libgcc aborts on an unknown
    one); a batch loaded again at possibly the same addresses throws fine."""
    ln = new_linker()
    a = build.cxx("shapes_a.cpp", "-O2", "-fPIC")
    b = build.cxx("shapes_b.cpp", "-O2", "-fPIC")
    for _ in range(5):
        ln.add_object(a)
        h1 = ln.finalize()
        ln.add_object(b)
        h2 = ln.finalize()
        assert ln.function("shapes_checked_sum", "int(int *, int)")(*ints(4, -9)) == -991
        h2.remove()
        h1.remove()
    assert ln.handles == []


def eh_frame_records(lb):
    """(kind, pc_begin, pc_range) per record of the batch's registered image,
    decoded from the sealed memory (g++'s FDEs are pcrel|sdata4)."""
    image = lb.eh_frame
    data = bytes(ffi.buffer(ffi.cast("char *", image.address), image.size))
    out = []
    off = 0
    while True:
        length = int.from_bytes(data[off : off + 4], "little")
        if length == 0:
            break
        cie_ptr = int.from_bytes(data[off + 4 : off + 8], "little")
        if cie_ptr == 0:
            out.append(("cie", 0, 0))
        else:
            rel = int.from_bytes(data[off + 8 : off + 12], "little", signed=True)
            rng = int.from_bytes(data[off + 12 : off + 16], "little")
            out.append(("fde", image.address + off + 8 + rel, rng))
        off += 4 + length
    assert off + unwind.TERMINATOR == len(data)
    return out


def test_eh_frame_image_is_terminated_and_covers_only_linked_code(build):
    ln = new_linker()
    ln.add_object(build.cxx("shapes_a.cpp", "-O2", "-fPIC"))
    ln.finalize()
    ln.add_object(build.cxx("shapes_b.cpp", "-O2", "-fPIC"))
    ln.add_object(build.cxx("rethrow.cpp", "-O2", "-fPIC"))
    h2 = ln.finalize()
    try:
        lb = h2.batch
        text = lb.segments["text"]
        lo = lb.allocation.target_base + text.offset
        hi = lo + text.size
        records = eh_frame_records(lb)
        fdes = [r for r in records if r[0] == "fde"]
        assert len(fdes) >= 3
        for _, begin, size in fdes:
            assert lo <= begin and begin + size <= hi
        # Both objects' copies of the COMDAT functions were dropped: their
        # FDEs were turned into unreferenced CIEs.  Two objects contribute one
        # real CIE each, so there are more CIE-marked records than that.
        assert sum(r[0] == "cie" for r in records) > 2
        # Every defined function in the batch has an FDE covering it.
        for name in ("shapes_checked_sum", "relay_sum", "shapes_b_total"):
            addr = ln.lookup(name)
            assert any(b <= addr < b + s for _, b, s in fdes), name
    finally:
        ln.close()


def test_eh_frame_sections_are_contiguous_with_zero_terminator(build):
    ln = rtdyld.Linker(run_initializers=False)
    objs = [build.cxx(n, "-O2", "-fPIC") for n in ("shapes_a.cpp", "shapes_b.cpp", "statics.cpp")]
    for o in objs:
        ln.add_object(o)
    h = ln.finalize()
    try:
        lb = h.batch
        eh = sorted((p.address, lb.objects[p.obj].sections[p.index].size) for p in lb.sections
                    if lb.objects[p.obj].sections[p.index].name == ".eh_frame")
        assert len(eh) == 3
        for (a, size), (b, _) in itertools.pairwise(eh):
            assert a + size == b
        end = eh[-1][0] + eh[-1][1]
        assert lb.eh_frame.address == eh[0][0]
        assert lb.eh_frame.address + lb.eh_frame.size == end + 4
        assert bytes(ffi.buffer(ffi.cast("char *", end), 4)) == b"\0\0\0\0"
    finally:
        h.remove()


def test_backtrace_walks_through_linked_frames(build):
    """glibc's backtrace() uses the unwinder: without the registered tables
    it would stop at the first linked frame."""
    ln = rtdyld.Linker()
    ln.add_object(build.cxx("unwind_probe.cpp", "-O2", "-fPIC"))
    h = ln.finalize()
    try:
        assert ln.function("probe_outer", "int(int)")(1) == 3
        depth = ln.function("probe_depth", "int(void)")()
        frames = ffi.cast("uintptr_t *", ln.function("probe_frames", "void *(void)")())
        addrs = [int(frames[i]) for i in range(depth)]
        outer = h.symbols["probe_outer"]
        assert any(outer.address < a <= outer.address + outer.size for a in addrs)
        # ... and beyond it, into the caller (cffi, then Python itself).
        assert depth > 4
        last_linked = max(i for i, a in enumerate(addrs) if outer.address < a <= outer.address + outer.size)
        assert last_linked < depth - 1
    finally:
        h.remove()


def test_static_constructors_and_destructors_per_batch(build, tmp_path):
    """Destructors registered with __cxa_atexit run when their batch is
    removed, in reverse order of construction, exactly once, and only that
    batch's (the same object is live in a second namespace); a batch still
    live at interpreter exit is finalized before the process exits."""
    obj = build.cxx("statics.cpp", "-O2", "-fPIC")
    script = tmp_path / "statics.py"
    script.write_text(textwrap.dedent(f"""
        import rtdyld
        ln = rtdyld.Linker()
        ln.link_library("stdc++")
        ln.add_object({str(obj)!r})
        h = ln.finalize()
        print("calls", ln.function("statics_touch_local", "int(void)")(), flush=True)
        ln.add_object({str(obj)!r}, dylib=ln.create_dylib("second"))
        h2 = ln.finalize()
        print("dso handles differ", 0 != h.batch.dso_handle != h2.batch.dso_handle != 0, flush=True)
        print("removing", flush=True)
        h.remove()
        print("removed", flush=True)
        print("exiting", flush=True)
    """))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = ord("l") + ord("f") + ord("s")
    assert proc.stdout.splitlines() == [
        "construct first",
        "construct second",
        "construct local",
        f"calls {calls}",
        "construct first",
        "construct second",
        "dso handles differ True",
        "removing",
        "destroy local",
        "destroy second",
        "destroy first",
        "removed",
        "exiting",
        "destroy second",
        "destroy first",
    ]


def test_dso_handle_is_private_to_the_batch(build):
    ln = rtdyld.Linker(run_initializers=False)
    ln.add_object(build.cxx("statics.cpp", "-O2", "-fPIC"))
    h = ln.finalize()
    try:
        lb = h.batch
        assert "__dso_handle" not in h.symbols
        assert "__dso_handle" not in ln.main.published
        base = lb.allocation.target_base
        rodata = lb.segments["rodata"]
        assert base + rodata.offset <= lb.dso_handle < base + rodata.offset + rodata.size
        ext = [e for e in lb.externals if e.name == "__dso_handle"]
        assert [e.address for e in ext] == [lb.dso_handle]
    finally:
        h.remove()


def test_run_links_stdcxx_from_the_command_line(build, tmp_path):
    main = tmp_path / "main.cpp"
    main.write_text(textwrap.dedent("""
        #include <cstdio>
        #include <stdexcept>
        #include <string>
        extern "C" int relay_catch(const int *values, int n);
        static std::string greeting("hello");
        struct Bye { ~Bye() { std::printf("bye\\n"); } } bye;
        int main(int argc, char **argv)
        {
            int bad[] = {3, -5};
            std::printf("%s %d %d\\n", greeting.c_str(), argc, relay_catch(bad, 2));
            return 7;
        }
    """))
    objs = [build.cxx(main, "-O2"), *(build.cxx(n, "-O2") for n in ("shapes_a.cpp", "rethrow.cpp", "catcher.cpp"))]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "rtdyld", "run", *map(str, objs), "-l", "stdc++", "--", "x"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == f"hello 2 {-2000 - ord('n')}\nbye\n"


# A hand-written .eh_frame whose records are padded to 4 bytes only (the
# DWARF minimum): a CIE of 24 bytes and an FDE of 20, 44 in all, in a section
# aligned to 8.  Placed at its own alignment after another such section, a
# 4-byte zero gap would end the unwinder's walk before the second one.
HANDMADE_EH_FRAME = """
    .text
    .globl {name}
{name}:
    ret
    .section .eh_frame,"a",@progbits
    .p2align 3
cie:
    .long cie_end - cie_start
cie_start:
    .long 0
    .byte 1
    .asciz "zR"
    .uleb128 1
    .sleb128 -8
    .uleb128 16
    .uleb128 1
    .byte 0x1b
    .byte 0x0c, 7, 8
    .byte 0x90, 1
    .p2align 2
cie_end:
fde:
    .long fde_end - fde_start
fde_start:
    .long fde_start - cie
    .long {name} - .
    .long 1
    .uleb128 0
    .p2align 2
fde_end:
"""


def unwinder_function_start(pc: int) -> int:
    """Where libgcc's own FDE lookup says the function holding ``pc`` starts (0: no FDE)."""
    ffi_ = FFI()
    ffi_.cdef("struct bases { void *tbase, *dbase, *func; };"
              "const void *_Unwind_Find_FDE(void *pc, struct bases *bases);")
    lib = ffi_.dlopen("libgcc_s.so.1")
    bases = ffi_.new("struct bases *")
    if lib._Unwind_Find_FDE(ffi_.cast("void *", pc), bases) == ffi_.NULL:
        return 0
    return int(ffi_.cast("uintptr_t", bases.func))


def test_records_padded_to_four_bytes_stay_contiguous(tmp_path):
    from rtdyld.asm import assemble

    ln = rtdyld.Linker(run_initializers=False)
    for name in ("first_fn", "second_fn"):
        data, display = assemble(HANDMADE_EH_FRAME.format(name=name), name=f"{name}.s")
        ln.add_object(data, name=display)
    h = ln.finalize()
    try:
        sizes = [h.batch.objects[p.obj].sections[p.index].size for p in h.batch.sections
                 if h.batch.objects[p.obj].sections[p.index].name == ".eh_frame"]
        assert sizes == [44, 44]
        records = eh_frame_records(h.batch)
        assert [r[0] for r in records] == ["fde" if i % 2 else "cie" for i in range(4)]
        for name in ("first_fn", "second_fn"):
            assert unwinder_function_start(ln.lookup(name)) == ln.lookup(name)
    finally:
        h.remove()


def test_the_unwinder_finds_every_linked_function(build):
    ln = new_linker()
    ln.add_object(build.cxx("shapes_a.cpp", "-O2", "-fPIC"))
    h1 = ln.finalize()
    ln.add_object(build.cxx("shapes_b.cpp", "-O2", "-fPIC"))
    h2 = ln.finalize()
    funcs = {n: d.address for h in (h1, h2) for n, d in h.symbols.items() if d.type == SymType.FUNC and d.size}
    assert "_ZN11AccumulatorIiE3addEi" in funcs and "shapes_checked_sum" in funcs
    for name, addr in funcs.items():
        assert unwinder_function_start(addr + 1) == addr, name
    h2.remove()
    addr = funcs["shapes_checked_sum"]
    assert unwinder_function_start(addr + 1) == 0  # deregistered with its batch
    h1.remove()


def test_no_eh_frame_no_registration():
    ln = rtdyld.Linker()
    ln.add_module("define i32 @plain() nounwind { ret i32 5 }", name="plain.ll")
    h = ln.finalize()
    try:
        assert ln.function("plain", "int(void)")() == 5
        assert h.batch.eh_frame is None
        assert h.batch.dso_handle == 0
    finally:
        h.remove()
