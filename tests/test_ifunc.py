"""IFUNC symbols defined in a batch: the resolver runs once, at link time, and
its result serves calls, GOT loads and pointers in data alike."""

from __future__ import annotations

import cffi
import pytest
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.ifunc import IfuncError

IFUNC = FIXTURES / "ifunc"
ffi = cffi.FFI()

FLAGS = {
    "pic": ("-O2", "-fPIC"),
    "pie": ("-O2", "-fPIE"),
    "nopic": ("-O2", "-fno-pic"),
    "pic-large": ("-O2", "-fPIC", "-mcmodel=large"),
    "pie-large": ("-O2", "-fPIE", "-mcmodel=large"),
    "pic-noplt": ("-O2", "-fPIC", "-fno-plt"),
    "O0-pic": ("-O0", "-fPIC"),
}


def choose(ln, callback, value: int) -> None:
    """Define ifunc_choice(), which the resolver asks."""
    ln.define("ifunc_choice", callback("int(void)", lambda: value))


def address(ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr))


@pytest.mark.parametrize("model", list(FLAGS))
@pytest.mark.parametrize("choice", [1, 2])
def test_every_reference_uses_the_resolved_function(build, ln, callback, model, choice):
    choose(ln, callback, choice)
    ln.add_object(str(build.cc(IFUNC / "select.c", *FLAGS[model])))
    handle = ln.finalize()
    expect = 21 if choice == 1 else 40
    # An address taken in code (call_through_taken under -fPIE) is the stub's,
    # which jumps to the same function.
    for name in ("call_direct", "call_through_data", "call_through_const", "call_through_taken", "picked"):
        assert ln.function(name, "int(int)")(20) == expect, name
    impl = address(ln.function("impl_address", "void *(int)")(choice))
    assert ln.lookup("picked") == impl
    assert address(ln.function("data_pointer", "void *(void)")()) == impl
    runs = ffi.cast("int *", ln.lookup("resolver_runs"))[0]
    assert runs == 1
    handle.remove()


def test_later_batch_gets_the_resolved_address(build, ln, callback):
    choose(ln, callback, 2)
    ln.add_object(str(build.cc(IFUNC / "select.c", "-O2", "-fPIC")))
    first = ln.finalize()
    ln.add_object(str(build.cc(IFUNC / "user.c", "-O2", "-fPIE")))
    second = ln.finalize()
    assert ln.function("user_call", "int(int)")(5) == 20
    impl = address(ln.function("impl_address", "void *(int)")(2))
    assert address(ln.function("user_pointer", "void *(void)")()) == impl
    assert ffi.cast("int *", ln.lookup("resolver_runs"))[0] == 1
    second.remove()
    first.remove()


def test_resolver_returning_null_fails_the_batch(build, ln, callback):
    choose(ln, callback, 0)
    path = str(build.cc(IFUNC / "select.c", "-O2", "-fPIC"))
    ln.add_object(path)
    live = len(ln.memory.live_allocations())
    with pytest.raises(IfuncError, match="resolver of 'picked' returned a null address"):
        ln.finalize()
    assert len(ln.memory.live_allocations()) == live
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("picked")


def test_code_is_sealed_before_the_resolver_runs(build, ln, callback, maps):
    """The resolver sees its own code executable and the GOT still writable, never both on one page."""
    seen = {}

    def choice_hook() -> int:
        text = maps.mapping_of(ln.memory.live_allocations()[-1].target_base)
        seen["text"] = text.perms
        return 1

    src = (
        "extern int hook(void);\n"
        "static int one(int x) { return x + 1; }\n"
        "static void *pick(void) { return hook() ? (void *)one : 0; }\n"
        'int f(int) __attribute__((ifunc("pick")));\n'
        "int (*fp)(int) = f;\n"
        "int g(int x) { return f(x) + fp(x); }\n"
    )
    ln.define("hook", callback("int(void)", choice_hook))
    ln.add_object(str(build.cc_text(src, "-O2", "-fPIC", stem="ifunc_hook")))
    handle = ln.finalize()
    assert seen["text"] == "r-xp"
    assert ln.function("g", "int(int)")(1) == 4
    handle.remove()


def test_trace_does_not_run_resolvers(build, capsys):
    from cli_helpers import rtdyld as run_cli

    path = build.cc(IFUNC / "select.c", "-O2", "-fPIC")
    code, out, err = run_cli(capsys, "trace", "--target-addr", "0x10000", "--define-abs", "ifunc_choice=0x1234", path)
    assert code == 0, err
    assert "picked" in out


def test_ifunc_in_a_thread_local_initialiser_is_refused(build, ln):
    src = (
        "static int one(int x) { return x + 1; }\n"
        "static void *pick(void) { return (void *)one; }\n"
        "int f(int) __attribute__((ifunc(\"pick\")));\n"
        "__thread int (*tfp)(int) = f;\n"
        "int g(int x) { return tfp(x); }\n"
    )
    path = str(build.cc_text(src, "-O2", "-fPIC", stem="ifunc_tls"))
    ln.add_object(path)
    with pytest.raises(IfuncError) as exc:
        ln.finalize()
    msg = str(exc.value)
    for part in (path, ".tdata+0x0", "R_X86_64_64", "'f'", "thread-local initialiser"):
        assert part in msg


def test_a_linker_that_runs_no_code_refuses_an_ifunc_and_leaves_no_trace(build, callback):
    ln = rtdyld.Linker(run_initializers=False)
    try:
        choose(ln, callback, 1)
        ln.add_object(str(build.cc(IFUNC / "select.c", "-O2", "-fPIC")))
        before = ln.snapshot()
        with pytest.raises(IfuncError) as exc:
            ln.finalize()
        assert str(exc.value) == (
            "the IFUNC 'picked' needs its resolver run at link time, but this Linker runs no linked code "
            "(run_initializers=False); link it with run_initializers=True"
        )
        assert ln.snapshot() == before
    finally:
        ln.close()
