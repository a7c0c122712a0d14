"""Which shared object holds a host address: asked once per address, forgotten on unload."""

from __future__ import annotations

import os

import pytest

from rtdyld import host, loaded_objects
from rtdyld.tls_module import TlsModule


@pytest.fixture
def without_the_loader_lookup(monkeypatch):
    """dladdr's path, as for the main program or a glibc without _dl_find_object."""
    monkeypatch.setattr(loaded_objects, "describe", lambda addr: None)


def test_describe_address_names_the_library_and_remembers_it(monkeypatch, without_the_loader_lookup):
    malloc = host.process_symbol("malloc")
    host.forget_descriptions()
    name = host.describe_address(malloc)
    assert name.startswith("libc.so")
    calls = []
    real = host.libc.dladdr
    monkeypatch.setattr(host, "libc", type("Libc", (), {"dladdr": lambda self, *a: calls.append(a) or real(*a)})())
    assert host.describe_address(malloc) == name
    assert calls == []  # answered from memory
    host.forget_descriptions()
    assert host.describe_address(malloc) == name
    assert len(calls) == 1  # asked the loader again


def test_unloading_a_tls_module_forgets_the_descriptions(without_the_loader_lookup):
    malloc = host.process_symbol("malloc")
    host.describe_address(malloc)
    host._described[malloc] = "stale"
    module = TlsModule(os.urandom(16), 32, 16, False, "forget")
    module.close()
    assert host.describe_address(malloc).startswith("libc.so")
