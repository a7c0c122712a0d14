"""The linkers a benchmark can time: rtdyld and llvmlite's JITs as peers.

Every engine splits one load of an object into an untimed ``prepare`` (make
an empty session or execution engine), a timed ``link`` (read the bytes,
relocate, make the code callable) and an untimed ``release``.  Teardown is
left out for every engine alike: the benchmarks measure loading.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import cffi

from .gen import ENTRY, ENTRY_SIGNATURE, PAD_CHECK, PAD_SIGNATURE, SEED_ARG, Generated
from .phases import PhaseLog, rtdyld_phases

ffi = cffi.FFI()


class Engine:
    """One way of loading an object into this process."""

    name = ""

    def unavailable(self) -> str | None:
        """Why this engine cannot run here, or None if it can."""
        return None

    def prepare(self, gen: Generated):
        """An empty session ready to link ``gen``; not timed."""
        raise NotImplementedError

    def link(self, state, gen: Generated) -> None:
        """Load ``gen`` into the session; this is what is timed."""
        raise NotImplementedError

    def address(self, state, symbol: str) -> int:
        raise NotImplementedError

    def release(self, state) -> None:
        """Unload everything the session linked; not timed."""

    def instrument(self) -> AbstractContextManager[PhaseLog | None]:
        """Per-phase timing of the links made inside the context, if the engine has phases."""
        return nullcontext(None)

    def run_checks(self, state) -> tuple[int, int]:
        """``bench_check(SEED_ARG)`` and ``bench_pad_ok()`` called through this engine's link."""
        check = ffi.cast(_pointer_type(ENTRY_SIGNATURE), self.address(state, ENTRY))
        pad_ok = ffi.cast(_pointer_type(PAD_SIGNATURE), self.address(state, PAD_CHECK))
        return int(check(SEED_ARG)), int(pad_ok())


def _pointer_type(signature: str) -> str:
    return signature.replace("(", "(*)(", 1)


class Rtdyld(Engine):
    name = "rtdyld"

    def prepare(self, gen: Generated):
        import rtdyld

        return rtdyld.Linker()

    def link(self, state, gen: Generated) -> None:
        state.add_object(gen.data, name=gen.name)
        state.finalize()

    def address(self, state, symbol: str) -> int:
        return state.lookup(symbol)

    def release(self, state) -> None:
        state.close()

    def instrument(self) -> AbstractContextManager[PhaseLog | None]:
        return rtdyld_phases()


def _llvm():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm


def _target_machine(llvm, gen: Generated):
    target = llvm.Target.from_default_triple()
    return target.create_target_machine(reloc=gen.reloc, codemodel=gen.code_model)


class MCJIT(Engine):
    """llvmlite's MCJIT (LLVM's RuntimeDyld): ``add_object_file`` + ``finalize_object``."""

    name = "MCJIT"

    def unavailable(self) -> str | None:
        try:
            _llvm()
        except ImportError:
            return "llvmlite is not installed"
        return None

    def prepare(self, gen: Generated):
        llvm = _llvm()
        # The engine owns its target machine, so each engine gets a fresh one.
        return llvm.create_mcjit_compiler(llvm.parse_assembly(""), _target_machine(llvm, gen))

    def link(self, state, gen: Generated) -> None:
        llvm = _llvm()
        state.add_object_file(llvm.ObjectFileRef.from_data(gen.data))
        state.finalize_object()

    def address(self, state, symbol: str) -> int:
        return state.get_global_value_address(symbol)

    def release(self, state) -> None:
        state.close()


@dataclass
class _LLJITSession:
    jit: object
    target_machine: object
    tracker: object = None


class LLJIT(Engine):
    """llvmlite's LLJIT linking the object as a JITLibraryBuilder library.

    With ``jit_link`` the ORC object layer uses JITLink instead of RuntimeDyld.
    """

    _names = itertools.count()

    def __init__(self, jit_link: bool):
        self.jit_link = jit_link
        self.name = "JITLink" if jit_link else "LLJIT"

    def unavailable(self) -> str | None:
        try:
            llvm = _llvm()
        except ImportError:
            return "llvmlite is not installed"
        if not hasattr(llvm, "create_lljit_compiler") or not hasattr(llvm, "JITLibraryBuilder"):
            return "this llvmlite has no LLJIT API"
        return None

    def prepare(self, gen: Generated):
        llvm = _llvm()
        tm = _target_machine(llvm, gen)
        return _LLJITSession(llvm.create_lljit_compiler(tm, use_jit_link=self.jit_link), tm)

    def link(self, state, gen: Generated) -> None:
        llvm = _llvm()
        builder = llvm.JITLibraryBuilder().add_object_img(gen.data).add_current_process()
        builder.export_symbol(ENTRY).export_symbol(PAD_CHECK)
        state.tracker = builder.link(state.jit, f"bench{next(self._names)}")

    def address(self, state, symbol: str) -> int:
        return state.tracker[symbol]

    def release(self, state) -> None:
        if state.tracker is not None:
            state.tracker.close()
        state.jit.close()


def peers() -> list[Engine]:
    """Every peer, available or not, in the order tables show them."""
    return [MCJIT(), LLJIT(jit_link=False), LLJIT(jit_link=True)]
