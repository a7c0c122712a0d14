"""The pre-parsed cffi modules: generated from the declarations, and in step with them."""

from __future__ import annotations

import pytest

from rtdyld import ffigen


@pytest.mark.parametrize("module", sorted(ffigen.MODULES))
def test_generated_module_matches_its_declarations(module):
    with open(ffigen.path(module), encoding="utf-8") as f:
        committed = f.read()
    assert committed == ffigen.source(module), f"{module} is stale: run 'python -m rtdyld.ffigen'"


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
