"""The pre-parsed cffi modules: generated from the declarations, and in step with them."""

from __future__ import annotations

import importlib

import cffi
import pytest

from rtdyld import ffigen


def _declared(ffi, names: list[str]) -> dict[str, object]:
    """What ``ffi`` says of each declaration: a function's C type (None if
    the process lacks it), a struct's or typedef's fields with offsets."""
    lib = ffi.dlopen(None)
    out: dict[str, object] = {}
    for key in names:
        kind, name = key.split(" ", 1)
        if kind == "function":
            try:
                out[key] = ffi.typeof(getattr(lib, name)).cname
            except (AttributeError, ffi.error):
                out[key] = None
            continue
        t = ffi.typeof(f"{kind} {name}" if kind in ("struct", "union") else name)
        fields = [(f, ft.type.cname, ft.offset) for f, ft in (t.fields or [])]
        out[key] = (t.cname, ffi.sizeof(t), fields)
    return out


@pytest.mark.parametrize("module", sorted(ffigen.MODULES))
def test_generated_module_matches_its_declarations(module):
    with open(ffigen.path(module), encoding="utf-8") as f:
        committed = f.read()
    if committed == ffigen.source(module):
        return
    # Another cffi version may encode the same declarations differently:
    # then what the committed module declares must equal what parsing the
    # declarations gives, function by function and field by field.
    _, declarations = ffigen.MODULES[module]
    parsed = cffi.FFI()
    parsed.cdef(declarations)
    names = [k for k in parsed._parser._declarations if k.split(" ", 1)[0] in ("function", "struct", "typedef")]
    generated = importlib.import_module(module)
    assert _declared(generated.ffi, names) == _declared(parsed, names), (
        f"{module} is stale: run 'python -m rtdyld.ffigen'"
    )


def test_every_declared_libc_function_is_in_the_process():
    from memmgr import _libc_ffi as memmgr_ffi
    from rtdyld import _libc_ffi as rtdyld_ffi

    libc = memmgr_ffi.ffi.dlopen(None)
    for name in ("mmap", "mprotect", "munmap", "madvise"):
        assert int(memmgr_ffi.ffi.cast("uintptr_t", getattr(libc, name))) != 0
    libc = rtdyld_ffi.ffi.dlopen(None)
    # _dl_find_object is optional (glibc >= 2.35): rtdyld.loaded_objects falls back to dladdr.
    for name in ("dlopen", "dlsym", "dlerror", "dladdr", "fflush", "dlclose", "dlinfo"):
        assert int(rtdyld_ffi.ffi.cast("uintptr_t", getattr(libc, name))) != 0


def test_signatures_parse_in_the_pre_parsed_ffi():
    # Linker.function casts to the user's signature through host.ffi: the
    # pre-parsed FFI has its own parser for type names.
    from rtdyld import host

    fn = host.ffi.cast("unsigned long(*)(const unsigned char *, unsigned long, ...)", 0x1000)
    assert host.ffi.typeof(fn).cname == "unsigned long(*)(unsigned char *, unsigned long, ...)"
    assert host.ffi.sizeof("Dl_info") == 32
    assert host.ffi.offsetof("struct jit_descriptor", "first_entry") == 16
    with pytest.raises(host.ffi.error, match="undefined type name"):
        host.ffi.cast("no_such_type(*)(int)", 0)


def test_function_pointers_to_types_the_pre_parsed_ffi_does_not_declare():
    from rtdyld import host

    labs = host.function_pointer("long(*)(long)", host.process_symbol("labs"))
    assert labs(-7) == 7
    opaque = host.function_pointer("struct point *(*)(int, struct point *)", 0x1000)
    assert host.ffi.typeof(opaque).cname == "struct point *(*)(int, struct point *)"
    with pytest.raises(Exception, match="Invalid struct/union declaration"):
        host.function_pointer("int(*)(struct)", 0x1000)
