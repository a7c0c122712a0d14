"""Process symbols: asked of the loader at every look-up; where they come
from is asked only when something reads it."""

from __future__ import annotations

import pytest

import rtdyld
from rtdyld import host, symbols

STRLEN_IR = r"""
@msg = private unnamed_addr constant [6 x i8] c"hello\00"

declare i64 @strlen(ptr)

define i64 @hello_len() {
  %n = call i64 @strlen(ptr @msg)
  ret i64 %n
}
"""


class _CountingDlsym:
    """host's dlsym binding, counting its calls."""

    def __init__(self, real):
        self.real = real
        self.asked: list[bytes] = []

    def __call__(self, handle, name):
        self.asked.append(name)
        return self.real(handle, name)


@pytest.fixture
def counting_dlsym(monkeypatch):
    dlsym = _CountingDlsym(host._dlsym_address)
    monkeypatch.setattr(host, "_dlsym_address", dlsym)
    return dlsym


def test_every_look_up_asks_the_loader(counting_dlsym):
    # Nothing is remembered between look-ups: a library unloaded behind
    # rtdyld's back cannot leave a stale address, found or not.
    first = host.process_symbol("malloc")
    assert first and host.process_symbol("malloc") == first
    assert host.process_symbol("rtdyld_test_no_such_symbol") == 0
    assert host.process_symbols(["malloc", "rtdyld_test_no_such_symbol"]) == [first, 0]
    assert counting_dlsym.asked == [b"malloc", b"malloc", b"rtdyld_test_no_such_symbol",
                                    b"malloc", b"rtdyld_test_no_such_symbol"]


def test_the_integer_binding_answers_as_dlsym_does():
    for name in ("malloc", "stdout", "rtdyld_test_no_such_symbol"):
        pointer = host.libc.dlsym(host.RTLD_DEFAULT, name.encode())
        assert host.process_symbol(name) == int(host.ffi.cast("uintptr_t", pointer))


def test_each_link_asks_the_loader_again(counting_dlsym):
    for _ in range(2):
        ln = rtdyld.Linker()
        try:
            ln.add_module(STRLEN_IR, name="strlen_user")
            ln.finalize()
            assert ln.function("hello_len", "long(void)")() == 5
        finally:
            ln.close()
    assert counting_dlsym.asked.count(b"strlen") == 2


@pytest.fixture
def described(monkeypatch):
    """Addresses host.describe_address was asked about."""
    asked: list[int] = []
    real = host.describe_address
    monkeypatch.setattr(host, "describe_address", lambda addr: asked.append(addr) or real(addr))
    return asked


def test_a_process_definition_names_its_library_when_read(described):
    d = symbols.Dylib().resolve("malloc")
    assert d.address == host.process_symbol("malloc")
    assert described == []
    assert d.origin.startswith("libc.so")
    assert d.origin.startswith("libc.so")
    assert described == [d.address]


def test_a_process_definition_origin_can_be_set():
    d = symbols.Dylib().resolve("malloc")
    d.origin = "elsewhere"
    assert d.origin == "elsewhere"


def test_linking_against_the_process_does_not_describe_its_symbols(described):
    ln = rtdyld.Linker()
    try:
        ln.add_module(STRLEN_IR, name="strlen_user")
        handle = ln.finalize()
        assert ln.function("hello_len", "long(void)")() == 5
        assert described == []
        (ext,) = [e for e in handle.batch.externals if e.name == "strlen"]
        assert ext.address == host.process_symbol("strlen")
        assert ext.source.startswith("libc.so")
        assert described == [ext.address]
    finally:
        ln.close()
