"""Dylibs: independent namespaces whose link order decides what a name means.

Two providers define the same names (``answer``, ``shared_value``) in two
dylibs; consumers in other dylibs reach one or the other through their link
order, and the process (libc's ``strlen``) only when the order says so.
Sessions that share a dylib see each other's finalized batches.
"""

from __future__ import annotations

import pytest
from cffi import FFI
from fixtures_build import FIXTURES

import rtdyld
from rtdyld.symbols import Dylib

ffi = FFI()

LIFECYCLE = FIXTURES / "lifecycle"

# ask() = answer() * 10 + strlen("hello"); provider_one's answer() is 100 + 1,
# provider_two's is 200 + 2.
ASK_ONE = 101 * 10 + 5
ASK_TWO = 202 * 10 + 5


def ir(name: str) -> str:
    return (LIFECYCLE / name).read_text()


def load_providers(ln: rtdyld.Linker) -> tuple[Dylib, Dylib, rtdyld.Handle]:
    one = ln.create_dylib("one")
    two = ln.create_dylib("two")
    ln.add_module(ir("provider_one.ll"), name="provider_one", dylib=one)
    ln.add_module(ir("provider_two.ll"), name="provider_two", dylib=two)
    return one, two, ln.finalize()


def test_same_name_in_two_dylibs_does_not_clash(ln):
    one, two, handle = load_providers(ln)
    assert ln.function("answer", "int(void)", dylib=one)() == 101
    assert ln.function("answer", "int(void)", dylib=two)() == 202
    for dylib, value in ((one, 100), (two, 200)):
        address = ln.lookup("shared_value", dylib=dylib)
        assert bytes(ffi.buffer(ffi.cast("char *", address), 4)) == value.to_bytes(4, "little")
    assert set(handle.symbols) == {"answer", "shared_value"}
    assert handle.objects == ["provider_one", "provider_two"]
    with pytest.raises(rtdyld.UndefinedSymbolError, match="answer"):
        ln.lookup("answer")


def test_same_name_in_two_dylibs_across_batches(ln):
    one = ln.create_dylib("one")
    two = ln.create_dylib("two")
    ln.add_module(ir("provider_one.ll"), name="provider_one", dylib=one)
    ln.finalize()
    ln.add_module(ir("provider_two.ll"), name="provider_two", dylib=two)
    ln.finalize()
    assert ln.function("answer", "int(void)", dylib=one)() == 101
    assert ln.function("answer", "int(void)", dylib=two)() == 202


def test_same_name_twice_in_one_dylib_still_clashes(ln):
    one = ln.create_dylib("one")
    ln.add_module(ir("provider_one.ll"), name="provider_one", dylib=one)
    ln.finalize()
    ln.add_module(ir("provider_two.ll"), name="provider_two", dylib=one)
    with pytest.raises(rtdyld.DuplicateSymbolError) as exc:
        ln.finalize()
    msg = str(exc.value)
    assert "provider_one" in msg and "provider_two" in msg
    assert ln.function("answer", "int(void)", dylib=one)() == 101


def test_link_order_picks_the_provider(ln):
    one, two, _ = load_providers(ln)
    user_one = ln.create_dylib("user_one")
    user_two = ln.create_dylib("user_two")
    user_one.link_order([one, "process"])
    user_two.link_order([two, "process"])
    ln.add_module(ir("consumer.ll"), name="consumer_of_one", dylib=user_one)
    ln.add_module(ir("consumer.ll"), name="consumer_of_two", dylib=user_two)
    ln.finalize()

    assert ln.function("ask", "int(void)", dylib=user_one)() == ASK_ONE
    assert ln.function("ask", "int(void)", dylib=user_two)() == ASK_TWO
    for user, provider in ((user_one, one), (user_two, two)):
        address = ln.function("shared_address", "uintptr_t(void)", dylib=user)()
        assert address == ln.lookup("shared_value", dylib=provider)


def test_batch_across_dylibs_is_removed_from_each(ln):
    one, two, providers = load_providers(ln)
    user = ln.create_dylib("user")
    user.link_order([two, "process"])
    ln.add_module(ir("consumer.ll"), name="consumer", dylib=user)
    consumer = ln.finalize()
    assert providers.dependents == {consumer}

    with pytest.raises(rtdyld.LinkError, match="consumer"):
        providers.remove()
    assert ln.function("ask", "int(void)", dylib=user)() == ASK_TWO
    consumer.remove()
    providers.remove()
    for dylib in (one, two, user):
        assert dylib.published == {}
    for name, dylib in (("answer", one), ("shared_value", two), ("ask", user)):
        with pytest.raises(rtdyld.UndefinedSymbolError, match=dylib.name):
            ln.lookup(name, dylib=dylib)


def test_link_order_is_searched_in_order(ln):
    one, two, _ = load_providers(ln)
    first_two = ln.create_dylib("first_two")
    first_two.link_order([two, one, "process"])
    ln.add_module(ir("consumer.ll"), name="consumer", dylib=first_two)
    ln.finalize()
    assert ln.function("ask", "int(void)", dylib=first_two)() == ASK_TWO


@pytest.mark.parametrize("consumer_first", [False, True], ids=["provider-first", "consumer-first"])
def test_provider_in_the_same_batch_as_its_consumer(ln, consumer_first):
    one = ln.create_dylib("one")
    user = ln.create_dylib("user")
    user.link_order([one, "process"])
    inputs = [("provider_one.ll", one), ("consumer.ll", user)]
    for name, dylib in reversed(inputs) if consumer_first else inputs:
        ln.add_module(ir(name), name=name, dylib=dylib)
    ln.finalize()
    assert ln.function("ask", "int(void)", dylib=user)() == ASK_ONE


def ping(n: int) -> int:
    return 1 if n <= 0 else pong(n - 1) * 2


def pong(n: int) -> int:
    return 2 if n <= 0 else ping(n - 1) + 3


@pytest.mark.xfail(
    strict=True,
    raises=rtdyld.UndefinedSymbolError,
    reason="the dylibs of one batch link one after another, so two that need each other cannot link",
)
@pytest.mark.parametrize("order", [("ping.ll", "pong.ll"), ("pong.ll", "ping.ll")], ids=["ping-first", "pong-first"])
def test_dylibs_that_need_each_other_in_one_batch(ln, order):
    p = ln.create_dylib("p")
    q = ln.create_dylib("q")
    p.link_order([q, "process"])
    q.link_order([p, "process"])
    home = {"ping.ll": p, "pong.ll": q}
    for name in order:
        ln.add_module(ir(name), name=name, dylib=home[name])
    ln.finalize()
    assert ln.function("ping", "int64_t(int64_t)", dylib=p)(5) == ping(5)
    assert ln.function("pong", "int64_t(int64_t)", dylib=q)(5) == pong(5)


def test_process_is_reached_only_through_the_link_order(ln):
    one, _, _ = load_providers(ln)
    sealed = ln.create_dylib("sealed")
    sealed.link_order([one])
    ln.add_module(ir("consumer.ll"), name="sealed_consumer", dylib=sealed)
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.finalize()
    assert set(exc.value.missing) == {"strlen"}
    assert "sealed_consumer" in str(exc.value)

    open_ = ln.create_dylib("open")
    assert open_.link_order([one, "process"])[-1] == "process"
    ln.add_module(ir("consumer.ll"), name="open_consumer", dylib=open_)
    ln.finalize()
    assert ln.function("ask", "int(void)", dylib=open_)() == ASK_ONE


def test_dylib_without_the_provider_in_its_order(ln):
    load_providers(ln)
    lonely = ln.create_dylib("lonely")
    ln.add_module(ir("consumer.ll"), name="lonely_consumer", dylib=lonely)
    with pytest.raises(rtdyld.UndefinedSymbolError) as exc:
        ln.finalize()
    assert set(exc.value.missing) == {"answer", "shared_value"}


def test_dylib_names_are_unique(ln):
    ln.create_dylib("twin")
    with pytest.raises(rtdyld.UsageError, match="twin"):
        ln.create_dylib("twin")


def test_link_order_rejects_other_entries():
    with pytest.raises(TypeError):
        Dylib("d").link_order([42])


def test_default_dylib_behaves_as_before(ln):
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    ln.add_module(ir("consumer.ll"), name="consumer")
    handle = ln.finalize()
    assert ln.function("ask", "int(void)")() == ASK_ONE
    assert ln.lookup("answer") == handle.symbols["answer"].address
    assert ln.resolver is ln.main
    assert ln.main.order() == ["process"]
    assert set(ln.main.published) == {"answer", "shared_value", "ask", "shared_address"}


def test_two_sessions_share_one_dylib():
    shared = Dylib("shared")
    first = rtdyld.Linker(resolver=shared)
    second = rtdyld.Linker(resolver=shared)
    try:
        first.add_module(ir("provider_one.ll"), name="provider_one")
        provider = first.finalize()
        # The second session's batch resolves answer() from the first's.
        second.add_module(ir("consumer.ll"), name="consumer")
        consumer = second.finalize()
        assert second.function("ask", "int(void)")() == ASK_ONE
        assert second.lookup("answer") == first.lookup("answer")
        assert first.function("ask", "int(void)")() == ASK_ONE
        assert consumer in provider.dependents

        # One namespace: the second session cannot define answer() again.
        second.add_module(ir("provider_two.ll"), name="provider_two")
        with pytest.raises(rtdyld.DuplicateSymbolError, match="answer"):
            second.finalize()

        # A batch of the first session is still in use by one of the second.
        with pytest.raises(rtdyld.LinkError, match="consumer"):
            provider.remove()
        consumer.remove()
        provider.remove()
        with pytest.raises(rtdyld.UndefinedSymbolError):
            second.lookup("answer")
    finally:
        second.close()
        first.close()
