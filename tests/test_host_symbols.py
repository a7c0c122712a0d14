"""Process symbols: found once, remembered until a library is unloaded; where
they come from is asked of the loader only when something reads it."""

from __future__ import annotations

import os

import pytest

import rtdyld
from rtdyld import host, symbols
from rtdyld.tls_module import TlsModule

STRLEN_IR = r"""
@msg = private unnamed_addr constant [6 x i8] c"hello\00"

declare i64 @strlen(ptr)

define i64 @hello_len() {
  %n = call i64 @strlen(ptr @msg)
  ret i64 %n
}
"""


class _CountingLibc:
    """host.libc, counting its dlsym calls."""

    def __init__(self, real):
        self.real = real
        self.asked: list[bytes] = []

    def dlsym(self, handle, name):
        self.asked.append(name)
        return self.real.dlsym(handle, name)


@pytest.fixture
def counting_libc(monkeypatch):
    libc = _CountingLibc(host.libc)
    monkeypatch.setattr(host, "libc", libc)
    return libc


def test_a_name_found_in_the_process_is_asked_once(counting_libc):
    host.forget_descriptions()
    first = host.process_symbol("malloc")
    assert first and host.process_symbol("malloc") == first
    assert counting_libc.asked == [b"malloc"]
    host.forget_descriptions()
    assert host.process_symbol("malloc") == first
    assert counting_libc.asked == [b"malloc", b"malloc"]


def test_a_name_not_found_is_asked_every_time(counting_libc):
    # A library loaded later may define it.
    assert host.process_symbol("rtdyld_test_no_such_symbol") == 0
    assert host.process_symbol("rtdyld_test_no_such_symbol") == 0
    assert counting_libc.asked == [b"rtdyld_test_no_such_symbol"] * 2


def test_unloading_a_tls_module_forgets_the_names_found(counting_libc):
    host.process_symbol("malloc")
    module = TlsModule(os.urandom(16), 32, 16, False, "forget names")
    module.close()
    counting_libc.asked.clear()
    host.process_symbol("malloc")
    assert counting_libc.asked == [b"malloc"]


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
