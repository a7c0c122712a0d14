"""Machine code for indirect stubs, lazy trampolines and the lazy resolver.

Hand-encoded x86-64, one comment per instruction; ``tests/test_lazy.py``
disassembles every piece with capstone and compares the listing.

Three pieces, all written while their memory is in flight and never patched
once sealed (no page is ever flipped back to writable):

* an **indirect stub** is ``jmp *slot(%rip)``: its target lives in a slot in a
  separate read-write segment, so re-pointing it is one aligned 8-byte store;
* a **trampoline** (one per lazy function) loads the function's id into
  ``r11`` and jumps to the resolver.  ``r11`` is the psABI's scratch register:
  it carries no argument and callers expect it clobbered by any call, so using
  it here leaves every argument intact;
* the **resolver** saves every register that can carry an argument, calls
  ``uint64_t callback(uint64_t id)`` (a cffi callback into Python) with the
  stack 16-byte aligned, restores the registers and jumps to the address the
  callback returned, so the interrupted call proceeds as if it had been direct.
  Only the low 128 bits of the vector registers are saved: that covers every
  psABI argument except 256/512-bit vectors (``__m256`` in ymm), which lazy
  functions therefore must not take.
"""

from __future__ import annotations

import struct

STUB_SIZE = 8  # jmp *disp32(%rip) is 6 bytes; 2 bytes of int3 pad it to 8
TRAMPOLINE_SIZE = 16  # movabs r11 (10) + jmp rel32 (5) + int3 (1)
INT3 = b"\xcc"


def stub(stub_address: int, slot_address: int) -> bytes:
    """``jmp *slot(%rip)`` at ``stub_address``, padded with int3 to STUB_SIZE."""
    disp = slot_address - (stub_address + 6)  # RIP is the end of the 6-byte jmp
    return b"\xff\x25" + _disp32(disp, "stub slot") + INT3 * 2  # jmp *disp32(%rip)


def trampoline(trampoline_address: int, function_id: int, resolver_address: int) -> bytes:
    """``mov $id, %r11; jmp resolver`` at ``trampoline_address``."""
    code = b"\x49\xbb" + struct.pack("<Q", function_id)  # movabs r11, id
    rel = resolver_address - (trampoline_address + len(code) + 5)  # from the end of the jmp
    code += b"\xe9" + _disp32(rel, "resolver")  # jmp rel32 resolver
    return code + INT3 * (TRAMPOLINE_SIZE - len(code))


# Registers saved by the resolver: every integer argument register, rax (the
# number of vector registers a varargs call uses) and r10 (the static chain of
# nested functions).  Pushed in this order, popped in reverse.
SAVED_GPRS = ("rax", "rdi", "rsi", "rdx", "rcx", "r8", "r9", "r10")
XMM_SAVE = 8 * 16  # xmm0-xmm7


def resolver(callback_address: int) -> bytes:
    """The resolver entered by every trampoline, with the function id in r11.

    On entry the stack is as the lazy function would see it (return address on
    top).  The frame pointer keeps the way back independent of the alignment
    fix-up, so the code is correct even if a caller misaligned the stack, and
    it is re-entrant: everything lives on the stack, so a callback may itself
    call lazy code.
    """
    code = bytearray()
    code += b"\x55"  # push rbp
    code += b"\x48\x89\xe5"  # mov rbp, rsp
    code += b"\x50"  # push rax
    code += b"\x57"  # push rdi
    code += b"\x56"  # push rsi
    code += b"\x52"  # push rdx
    code += b"\x51"  # push rcx
    code += b"\x41\x50"  # push r8
    code += b"\x41\x51"  # push r9
    code += b"\x41\x52"  # push r10
    code += b"\x48\x81\xec" + struct.pack("<i", XMM_SAVE)  # sub rsp, 128
    code += b"\x48\x83\xe4\xf0"  # and rsp, -16: movaps and the psABI call need 16-byte alignment
    for i in range(8):
        code += bytes((0x0F, 0x29, 0x44 | (i << 3), 0x24, 16 * i))  # movaps [rsp + 16*i], xmm<i>
    code += b"\x4c\x89\xdf"  # mov rdi, r11: the function id is the callback's argument
    code += b"\x48\xb8" + struct.pack("<Q", callback_address)  # movabs rax, callback
    code += b"\xff\xd0"  # call rax
    code += b"\x49\x89\xc3"  # mov r11, rax: the implementation's address
    for i in range(8):
        code += bytes((0x0F, 0x28, 0x44 | (i << 3), 0x24, 16 * i))  # movaps xmm<i>, [rsp + 16*i]
    code += b"\x48\x8d\x65" + struct.pack("<b", -8 * len(SAVED_GPRS))  # lea rsp, [rbp - 64]
    code += b"\x41\x5a"  # pop r10
    code += b"\x41\x59"  # pop r9
    code += b"\x41\x58"  # pop r8
    code += b"\x59"  # pop rcx
    code += b"\x5a"  # pop rdx
    code += b"\x5e"  # pop rsi
    code += b"\x5f"  # pop rdi
    code += b"\x58"  # pop rax
    code += b"\x5d"  # pop rbp
    code += b"\x41\xff\xe3"  # jmp r11: the return address is the original caller's
    return bytes(code)


def _disp32(value: int, what: str) -> bytes:
    if not -(1 << 31) <= value < (1 << 31):
        raise ValueError(f"{what} at {value:+#x} bytes is out of reach of a 32-bit displacement")
    return struct.pack("<i", value)
