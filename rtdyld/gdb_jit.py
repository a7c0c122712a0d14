"""Register linked batches with GDB through its JIT interface.

GDB's documented protocol: a process exports a function
``__jit_debug_register_code`` (GDB puts a breakpoint on it) and a
``__jit_debug_descriptor`` holding a doubly linked list of
``jit_code_entry`` records, each pointing at an in-memory object file.  To
register, the process links a new entry, points ``relevant_entry`` at it,
sets ``action_flag`` to JIT_REGISTER_FN and calls the function; to
unregister, it unlinks the entry and does the same with JIT_UNREGISTER_FN.

GDB looks both symbols up by name in each loaded object's symbol table.  The
Python executable has neither, but llvmlite (a dependency) ships
``libllvmlite.so`` with LLVM's copies as local symbols in its ``.symtab``,
which GDB finds like any other.  We load that library (without importing
llvmlite), read the two symbols' values from the file and add the load
address.  The alternative, a shared object synthesised at run time and
loaded from a memfd, would have no file GDB could read its symbols from.
If llvmlite's own GDB listener were also enabled in the same process, both
would share the list; it is not enabled by default and we never enable it.

Everything here runs only when debugger registration is on (see
:mod:`rtdyld.batch_runtime`).
"""

from __future__ import annotations

import importlib.util
import os
import threading

import numpy as np

from . import host
from ._libc_ffi import ffi
from .code_symbols import function_symbols
from .gdb_jit_image import ImageSection, build_image
from .objfile.elf_tables import ELF64_SYM

_libc = ffi.dlopen(None)

JIT_NOACTION, JIT_REGISTER_FN, JIT_UNREGISTER_FN = 0, 1, 2
RTLD_DI_LINKMAP = 2
RTLD_NOW = 2  # and RTLD_LOCAL: LLVM's exported names must not join the global scope
REGISTER_FN = "__jit_debug_register_code"
DESCRIPTOR = "__jit_debug_descriptor"

_lock = threading.Lock()
_interface = None  # (descriptor cdata, register function) or False


class Registration:
    """One batch's entry in GDB's list; holds the entry and the image alive
    (the list only points at them)."""

    def __init__(self, entry, image):
        self.entry = entry
        self.image = image


def llvmlite_library() -> str | None:
    spec = importlib.util.find_spec("llvmlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for d in spec.submodule_search_locations:
        path = os.path.join(d, "binding", "libllvmlite.so")
        if os.path.exists(path):
            return path
    return None


def symtab_values(path: str, names: list[str]) -> dict[str, int]:
    """``st_value`` of each named symbol in the file's ``.symtab`` (bulk read)."""
    from elftools.elf.elffile import ELFFile

    out: dict[str, int] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            return out
        strtab = elf.get_section(symtab["sh_link"])
        f.seek(strtab["sh_offset"])
        strings = f.read(strtab["sh_size"])
        f.seek(symtab["sh_offset"])
        syms = np.fromfile(f, dtype=ELF64_SYM, count=symtab["sh_size"] // ELF64_SYM.itemsize)
    for name in names:
        needle = name.encode() + b"\0"
        starts, at = [], strings.find(needle)
        while at >= 0:
            starts.append(at)
            at = strings.find(needle, at + 1)
        hit = np.flatnonzero(np.isin(syms["st_name"], starts) & (syms["st_shndx"] != 0))
        if len(hit):
            out[name] = int(syms["st_value"][hit[0]])
    return out


def _find_interface():
    path = llvmlite_library()
    if path is None:
        return False
    handle = host.libc.dlopen(path.encode(), RTLD_NOW)
    if handle == host.ffi.NULL:
        return False
    lm = ffi.new("struct link_map_head **")
    if _libc.dlinfo(ffi.cast("void *", int(host.ffi.cast("uintptr_t", handle))), RTLD_DI_LINKMAP, lm) != 0:
        return False
    base = int(lm[0].l_addr)
    values = symtab_values(path, [REGISTER_FN, DESCRIPTOR])
    if len(values) != 2:
        return False
    descriptor = ffi.cast("struct jit_descriptor *", base + values[DESCRIPTOR])
    register_code = ffi.cast("void (*)(void)", base + values[REGISTER_FN])
    return descriptor, register_code


def interface():
    """The process's (descriptor, __jit_debug_register_code), or None if unavailable."""
    global _interface
    with _lock:
        if _interface is None:
            _interface = _find_interface()
        return _interface or None


def batch_image(lb) -> bytes:
    """The ELF image describing a sealed batch: its code, unwind tables and functions."""
    base = lb.allocation.target_base
    sections = []
    text = lb.segments.get("text")
    if text is not None and text.size:
        sections.append(ImageSection(".text", base + text.offset, _read(base + text.offset, text.size), True))
    eh = lb.eh_frame
    if eh is not None:
        sections.append(ImageSection(".eh_frame", eh.address, _read(eh.address, eh.size), False))
    return build_image(sections, function_symbols(lb))


def _read(address: int, size: int) -> bytes:
    return bytes(ffi.buffer(ffi.cast("char *", address), size))


def register(lb) -> Registration | None:
    """Describe the batch to GDB; None when the interface is unavailable."""
    found = interface()
    if found is None:
        return None
    descriptor, register_code = found
    image = ffi.new("char[]", batch_image(lb))
    entry = ffi.new("struct jit_code_entry *")
    entry.symfile_addr = image
    entry.symfile_size = len(image)
    with _lock:
        entry.next_entry = descriptor.first_entry
        entry.prev_entry = ffi.NULL
        if descriptor.first_entry != ffi.NULL:
            descriptor.first_entry.prev_entry = entry
        descriptor.first_entry = entry
        descriptor.relevant_entry = entry
        descriptor.action_flag = JIT_REGISTER_FN
        register_code()
        descriptor.action_flag = JIT_NOACTION
    return Registration(entry, image)


def unregister(reg: Registration) -> None:
    """Take the batch's entry out of GDB's list (before its memory goes)."""
    found = interface()
    if found is None:
        return
    descriptor, register_code = found
    entry = reg.entry
    with _lock:
        if entry.prev_entry != ffi.NULL:
            entry.prev_entry.next_entry = entry.next_entry
        else:
            descriptor.first_entry = entry.next_entry
        if entry.next_entry != ffi.NULL:
            entry.next_entry.prev_entry = entry.prev_entry
        descriptor.relevant_entry = entry
        descriptor.action_flag = JIT_UNREGISTER_FN
        register_code()
        descriptor.action_flag = JIT_NOACTION
