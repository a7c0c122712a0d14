"""The shared object holding an address: the fast look-up agrees with dladdr."""

from __future__ import annotations

import os

import pytest

from rtdyld import host, loaded_objects


def _dladdr_name(addr: int) -> str:
    info = host.ffi.new("Dl_info *")
    assert host.libc.dladdr(host.ffi.cast("void *", addr), info)
    return host.ffi.string(info.dli_fname).decode()


def _mapped_addresses() -> list[int]:
    """The first byte and a byte inside every file-backed mapping of the process."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/"):
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out += [lo, (lo + hi) // 2]
    return out


needs_finder = pytest.mark.skipif(loaded_objects._finder() is None, reason="the C library has no _dl_find_object")


@needs_finder
def test_names_the_object_dladdr_names():
    handle, _ = host.open_library("m")
    addrs = [host.process_symbol("malloc"), host.process_symbol("stdout"), host.library_symbol(handle, "cos")]
    for addr in addrs:
        assert addr
        assert loaded_objects.object_file_name(addr) == _dladdr_name(addr)
    assert loaded_objects.describe(addrs[0]) == os.path.basename(_dladdr_name(addrs[0]))
    assert "libm" in loaded_objects.describe(addrs[2])


@needs_finder
def test_agrees_with_dladdr_over_every_mapping():
    answered = 0
    for addr in _mapped_addresses():
        name = loaded_objects.object_file_name(addr)
        if name is not None:
            answered += 1
            assert name == _dladdr_name(addr), hex(addr)
    assert answered > 10


def test_leaves_unknown_addresses_to_dladdr():
    assert loaded_objects.object_file_name(0) is None
    assert loaded_objects.object_file_name(4096) is None
    assert host.describe_address(4096) == ""


def test_describe_address_is_unchanged_for_process_symbols():
    addr = host.process_symbol("malloc")
    assert host.describe_address(addr) == os.path.basename(_dladdr_name(addr))
