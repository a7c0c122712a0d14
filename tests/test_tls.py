"""Thread-local storage: every model gcc and clang emit, per-thread copies, the loader's module.

Fixtures in fixtures/tls are compiled at test time.  Each test links, then
runs the linked code in several threads — some started before the link,
some after — and checks every thread saw its own copy, initialised from
.tdata/.tbss.  Every batch is removed at the end of its test: IE/LE blocks
live in glibc's small static TLS surplus.
"""

from __future__ import annotations

import threading

import cffi
import pytest
from cli_helpers import rtdyld as run_cli
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.tls import TlsReferenceError
from rtdyld.tls_module import TlsModuleError

TLS = FIXTURES / "tls"
ffi = cffi.FFI()

GCC_FLAGS = {
    "pic": ("-fPIC",),  # general and local dynamic
    "pie": ("-fPIE",),  # local and initial exec
    "nopic": ("-fno-pic",),
    "pic-large": ("-fPIC", "-mcmodel=large"),  # __tls_get_addr@PLTOFF
    "pie-large": ("-fPIE", "-mcmodel=large"),
    "nopic-large": ("-fno-pic", "-mcmodel=large"),
    "pic-noplt": ("-fPIC", "-fno-plt"),  # call *__tls_get_addr@GOTPCREL(%rip)
    "pic-ie": ("-fPIC", "-ftls-model=initial-exec"),
    "pic-ld": ("-fPIC", "-ftls-model=local-dynamic"),
    "pie-gd": ("-fPIE", "-ftls-model=global-dynamic"),
    "O0-pic": ("-O0", "-fPIC"),
}


def check_counters(ln):
    """The counters.c contract, from the main thread and four others."""
    bump = ln.function("tls_bump", "long(long)")
    hits = ln.function("tls_hits_now", "long(void)")
    zero = ln.function("tls_zero_now", "int(void)")
    hist = ln.function("tls_hist_sum", "long(void)")
    other = ln.function("tls_other_now", "long(void)")
    name = ln.function("tls_name_now", "const char *(void)")
    addr = ln.function("tls_hits_addr", "uintptr_t(void)")

    def work(i: int):
        start = (hits(), zero(), hist(), other(), ffi.string(name()))
        for _ in range(i + 1):
            bump(i + 1)
        return start, (hits(), zero(), hist(), other()), addr()

    return work


def expected(i: int):
    n = i + 1
    return (100, 0, 10, 7, b"counters"), (100 + n * n, n, 10 + n * n, 7 + 2 * n * n)


def link_gcc(build, ln, flags):
    opt = () if flags[0].startswith("-O") else ("-O2",)
    for src in ("counters.c", "other.c"):
        ln.add_object(str(build.cc(TLS / src, *opt, *flags)))
    return ln.finalize()


def threads_around_link(link, make_work, before=2, after=2):
    """Start ``before`` threads, link, start ``after`` more; each runs the work once.

    The first threads exist (blocked) while the batch is linked: they must
    get their copies as much as the threads created later.
    """
    results: dict[int, object] = {}
    errors: list[BaseException] = []
    go = threading.Event()
    # Every thread stays alive until all have worked, so no two share a copy by reuse.
    done = threading.Barrier(before + after, timeout=60)
    box: dict = {}

    def body(i: int) -> None:
        go.wait()
        try:
            results[i] = box["work"](i)
        except BaseException as e:  # noqa: BLE001 (re-raised by the test)
            errors.append(e)
        try:
            done.wait()
        except threading.BrokenBarrierError:
            pass  # the link failed; the test reports that

    threads = [threading.Thread(target=body, args=(i,)) for i in range(before)]
    for t in threads:
        t.start()
    try:
        handle = link()
        box["work"] = make_work()
    except BaseException:
        done.abort()
        go.set()
        for t in threads:
            t.join()
        raise
    go.set()
    late = [threading.Thread(target=body, args=(i,)) for i in range(before, before + after)]
    for t in late:
        t.start()
    for t in threads + late:
        t.join()
    assert not errors, errors
    return handle, results


@pytest.mark.parametrize("model", list(GCC_FLAGS))
def test_gcc_thread_counters(build, ln, model):
    flags = GCC_FLAGS[model]
    handle, results = threads_around_link(lambda: link_gcc(build, ln, flags), lambda: check_counters(ln))
    work = check_counters(ln)
    main = work(4)  # the linking thread is a thread like the others
    for i, (start, end, _) in results.items():
        assert (start, end) == expected(i), f"thread {i}"
    assert main[:2] == expected(4)
    assert len({a for _, _, a in results.values()} | {main[2]}) == len(results) + 1, "threads shared a copy"
    handle.remove()


IR_VARIANTS = [("pic", "small"), ("static", "small"), ("pic", "medium"), ("pic", "large"), ("static", "large")]


@pytest.mark.parametrize(("reloc", "code_model"), IR_VARIANTS, ids=[f"{r}-{c}" for r, c in IR_VARIANTS])
def test_llvm_models_per_thread(build, ln, reloc, code_model):
    obj = build.ir(TLS / "models.ll", reloc=reloc, code_model=code_model)

    def link():
        ln.add_object(obj, name=f"models-{reloc}-{code_model}.o")
        return ln.finalize()

    def make_work():
        bumps = [ln.function(n, "long(long)") for n in ("bump_gd", "bump_ld", "bump_ie", "bump_le")]
        slot = ln.function("ld_buffer_slot", "long(void)")
        zero = ln.function("le_zero_now", "int(void)")

        def work(i: int):
            first = [f(i) for f in bumps]
            second = [f(i) for f in bumps]
            return first, second, slot(), zero()

        return work

    handle, results = threads_around_link(link, make_work, before=2, after=2)
    results[9] = make_work()(9)
    for i, (first, second, slot, zero) in results.items():
        assert first == [1000 + i, 2000 + i, 3000 + i, 4000 + i]
        assert second == [1000 + 2 * i, 2000 + 2 * i, 3000 + 2 * i, 4000 + 2 * i]
        assert (slot, zero) == (2, 2)
    handle.remove()


def test_64_bit_offsets_and_every_model_agree(build, ln):
    """TPOFF64 and DTPOFF64 (movabs and data) reach the same copy as TLSGD and TLSLD."""
    ln.add_file(str(TLS / "wide.s"))
    handle = ln.finalize()
    names = ("le_address", "ld_address", "gd_address", "data_address")
    fns = [ln.function(n, "uintptr_t(void)") for n in names]

    def addresses(_=None):
        return [f() for f in fns]

    main = addresses()
    assert main[0] == main[1] == main[2] == main[3] - 8
    assert ffi.unpack(ffi.cast("uint64_t *", main[0]), 2) == [0x5157, 0x600D]
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("a", addresses()))
    t.start()
    t.join()
    other = box["a"]
    assert other[0] == other[1] == other[2] == other[3] - 8
    assert other[0] != main[0]
    assert ffi.unpack(ffi.cast("uint64_t *", other[0]), 2) == [0x5157, 0x600D]
    handle.remove()


def test_pointer_in_tdata_is_relocated(build, ln):
    """tls_name in .tdata points into the batch's .rodata: each thread's copy holds the relocated pointer."""
    link_gcc(build, ln, ("-fPIC",))
    name = ln.function("tls_name_now", "const char *(void)")
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("s", ffi.string(name())))
    t.start()
    t.join()
    assert box["s"] == ffi.string(name()) == b"counters"


def _tls_modules(maps) -> int:
    return len({m.path for m in maps.read() if "rtdyld-tls" in m.path})


def test_remove_unloads_the_tls_module(build, maps):
    before = _tls_modules(maps)
    ln = rtdyld.Linker()
    handle = link_gcc(build, ln, ("-fPIE",))
    assert _tls_modules(maps) == before + 1
    handle.remove()
    assert _tls_modules(maps) == before
    ln.close()


def test_batch_without_tls_loads_no_module(build, ln, maps):
    before = _tls_modules(maps)
    ln.add_object(str(build.cc("xa.c", "-O2", "-fPIC")))
    ln.add_object(str(build.cc("xb.c", "-O2", "-fPIC")))
    handle = ln.finalize()
    assert _tls_modules(maps) == before
    handle.remove()


def test_static_tls_that_does_not_fit_is_a_link_error(build, ln):
    """Initial/local exec need glibc's static surplus; 4 MiB never fits, and the session is unharmed."""
    path = str(
        build.cc_text(
            "__thread char huge[1 << 22];\nint peek(int i) { return huge[i]; }\n", "-O2", "-fPIE", stem="huge_tls"
        )
    )
    ln.add_object(path)
    live = len(ln.memory.live_allocations())
    with pytest.raises(TlsModuleError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert path in msg
    assert "4194304 bytes" in msg
    assert "static TLS" in msg
    assert "optional_static_tls" in msg
    assert len(ln.memory.live_allocations()) == live
    # The same variable through the dynamic model needs no static space.
    ln.add_object(
        str(
            build.cc_text(
                "__thread char huge[1 << 22];\nint peek(int i) { return ++huge[i]; }\n",
                "-O2",
                "-fPIC",
                stem="huge_tls_gd",
            )
        )
    )
    handle = ln.finalize()
    assert ln.function("peek", "int(int)")(123456) == 1
    handle.remove()


@pytest.mark.parametrize(
    ("first", "second"),
    [(("-fPIC",), ("-fPIC",)), (("-fPIC",), ("-fPIE",)), (("-fPIE",), ("-fno-pic",))],
    ids=["gd-gd", "gd-ie", "le-ie"],
)
def test_variable_of_an_earlier_batch(build, ln, first, second):
    """General dynamic and initial exec reach another batch's block; threads see their own copies."""
    ln.add_object(str(build.cc(TLS / "other.c", "-O2", *first)))
    provider = ln.finalize()
    ln.add_object(str(build.cc(TLS / "counters.c", "-O2", *second)))
    handle, results = threads_around_link(lambda: ln.finalize(), lambda: check_counters(ln))
    for i, (start, end, _) in results.items():
        assert (start, end) == expected(i), f"thread {i}"
    with pytest.raises(rtdyld.UsageError):
        provider.remove()  # still referenced
    handle.remove()
    provider.remove()


def test_initial_exec_into_a_dynamic_block_is_refused(build, ln):
    """A block too big for the static surplus falls back to the dynamic models: general
    dynamic still reaches it from a later batch, initial exec cannot, and says why."""
    big = "__thread char huge[1 << 22] = {7};\n"
    ln.add_object(str(build.cc_text(big, "-O2", "-fPIC", stem="huge_provider")))
    provider = ln.finalize()
    user = "extern __thread char huge[1 << 22];\nint peek(int i) { return huge[i]; }\n"
    ie = str(build.cc_text(user, "-O2", "-fPIE", stem="huge_ie"))
    ln.add_object(ie)
    with pytest.raises(TlsReferenceError) as exc:
        ln.finalize()
    msg = str(exc.value)
    for part in (ie, "R_X86_64_GOTTPOFF", "'huge'", "only uses the dynamic models", "-fPIC"):
        assert part in msg
    ln.add_object(str(build.cc_text(user, "-O2", "-fPIC", stem="huge_gd")))
    handle = ln.finalize()
    assert ln.function("peek", "int(int)")(0) == 7
    handle.remove()
    provider.remove()


def test_local_exec_reference_to_another_batch_is_refused(build, ln):
    ln.add_object(str(build.cc(TLS / "other.c", "-O2", "-fPIC")))
    first = ln.finalize()
    src = 'extern __thread long tls_other __attribute__((tls_model("local-exec")));\nlong peek(void) { return tls_other; }\n'
    path = str(build.cc_text(src, "-O2", "-fPIE", stem="le_extern"))
    ln.add_object(path)
    with pytest.raises(TlsReferenceError) as exc:
        ln.finalize()
    msg = str(exc.value)
    for part in (path, ".text+0x", "R_X86_64_TPOFF32", "'tls_other'", "must stay in its batch"):
        assert part in msg
    first.remove()


def test_host_variable_is_refused(build, ln, libc):
    """dlsym gives one thread's address of a library's variable: no use as a TLS target."""
    src = "extern __thread int host_tls;\nint peek(void) { return host_tls; }\n"
    path = str(build.cc_text(src, "-O2", "-fPIC", stem="host_tls"))
    cell = ffi.new("int *")
    ln.define("host_tls", int(ffi.cast("uintptr_t", cell)))
    ln.add_object(path)
    with pytest.raises(TlsReferenceError) as exc:
        ln.finalize()
    msg = str(exc.value)
    for part in (path, "R_X86_64_TLSGD", "'host_tls'", "user definition", "not a thread-local variable"):
        assert part in msg


def test_trace_prints_tls_relocations(build, capsys):
    objs = [build.cc(TLS / src, "-O2", "-fPIC") for src in ("counters.c", "other.c")]
    pie = build.cc(TLS / "counters.c", "-O2", "-fPIE")
    code, out, err = run_cli(capsys, "trace", "--target-addr", "0x10000", *objs)
    assert code == 0, err
    for rtype in ("R_X86_64_TLSGD", "R_X86_64_TLSLD", "R_X86_64_DTPOFF32"):
        assert rtype in out
    code, out, err = run_cli(capsys, "trace", "--target-addr", "0x10000", pie, objs[1])
    assert code == 0, err
    for rtype in ("R_X86_64_TPOFF32", "R_X86_64_GOTTPOFF"):
        assert rtype in out


def test_trace_values_follow_a_static_layout(build, capsys):
    """Without a process to load into, the block sits right below the thread pointer (module 1)."""
    import json

    code, out, err = run_cli(capsys, "trace", "--format", "json", "--target-addr", "0x10000", str(TLS / "wide.s"))
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    rows = [r for r in rows if r["record"] == "fixup"]
    tpoff = [r for r in rows if r["type"] == "R_X86_64_TPOFF64"]
    dtpoff = [r for r in rows if r["type"] == "R_X86_64_DTPOFF64"]
    assert len(tpoff) == 1 and len(dtpoff) == 2
    # wide_var is 16 bytes at offset 0 of a 16-byte block: %fs - 16.
    assert tpoff[0]["value"] == (1 << 64) - 16
    assert sorted(r["value"] for r in dtpoff) == [0, 8]


@pytest.mark.parametrize(
    ("sources", "flags"),
    [
        (["tls.c"], ("-O2", "-fPIE")),
        (["tls.c"], ("-O2", "-fPIC")),
        (["tls_extern.c", "tls_def.c"], ("-O2", "-fPIE")),
    ],
    ids=["local-exec", "general-dynamic", "initial-exec"],
)
def test_error_fixtures_now_link(build, ln, sources, flags):
    """The objects that used to be refused as "TLS not supported" link and run."""
    for src in sources:
        ln.add_object(str(build.cc(f"errors/{src}", *flags)))
    handle = ln.finalize()
    if "tls_bump" in ln.resolver.published:
        assert [ln.function("tls_bump", "int(void)")() for _ in range(2)] == [6, 7]
    else:
        assert ln.function("tls_read", "int(void)")() == 3
    handle.remove()


def test_map_shows_the_tls_image_and_got(build, capsys):
    objs = [build.cc(TLS / src, "-O2", "-fPIC") for src in ("counters.c", "other.c")]
    code, out, err = run_cli(capsys, "map", "--target-addr", "0x10000", *objs)
    assert code == 0, err
    rodata = out.split("segment rodata")[1].split("segment data")[0]
    lines = [line.split() for line in rodata.splitlines()[1:] if line.strip()]
    # The image first, initialised data before zero-fill, then the TLS GOT:
    # four general-dynamic pairs and the local-dynamic one.
    assert [ln[2] for ln in lines[:3]] == [".tdata", ".tdata", ".tbss"]
    got = next(ln for ln in lines if "*TLS" in ln)
    assert got[1] == "0x50"
    assert "5 module/offset pairs" in " ".join(got)
