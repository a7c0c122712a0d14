"""Assembly input: x86-64 AT&T assembly to a relocatable object, via llvmlite.

The source goes through LLVM's integrated assembler exactly as written (one
``module asm`` line per source line), so the object is the one ``llvm-mc
-filetype=obj`` would make for the same triple.

LLVM reports an assembly error by printing it and ending the process; there
is no hook in llvmlite to catch it.  So the assembler runs in a child
interpreter: a bad line becomes a :class:`MalformedObjectError` here instead
of the end of the caller's process.
"""

from __future__ import annotations

import os
import subprocess
import sys

from rtdyld.errors import MalformedObjectError

# Runs in the child: IR text on stdin, object bytes on stdout, LLVM's
# diagnostics on stderr and a non-zero exit status on failure.
_CHILD = r"""
import sys
import llvmlite.binding as llvm
llvm.initialize_all_targets()
llvm.initialize_all_asmprinters()
llvm.initialize_native_asmparser()
triple = sys.argv[1] or llvm.get_process_triple()
try:
    target = llvm.Target.from_triple(triple)
    module = llvm.parse_assembly('target triple = "%s"\n' % triple + sys.stdin.read())
except RuntimeError as exc:
    sys.exit(f"error: {exc}".strip())
machine = target.create_target_machine(reloc="static", codemodel="default")
sys.stdout.buffer.write(machine.emit_object(module))
"""

_INLINE_ASM = "<inline asm>"


def object_name(name: str) -> str:
    """The name ``llvm-mc -o`` would give the object of source ``name``:
    its basename with the extension replaced by ``.o`` (``dir/foo.s`` →
    ``foo.o``)."""
    stem = os.path.splitext(os.path.basename(name))[0] or "input"
    return stem + ".o"


def _escape(line: str) -> str:
    out = []
    for byte in line.encode("utf-8"):
        if 0x20 <= byte < 0x7F and byte not in (0x22, 0x5C):
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:02X}")
    return "".join(out)


def _module_asm(source: str) -> str:
    # One module asm line per source line keeps LLVM's "<inline asm>:LINE"
    # equal to the line in the user's file.
    return "".join(f'module asm "{_escape(line)}"\n' for line in source.splitlines())


def assemble(source: str, name: str = "input.s", triple: str | None = None) -> tuple[bytes, str]:
    """Assemble x86-64 AT&T ``source`` into a relocatable object.

    ``triple`` picks the object format (``x86_64-unknown-linux-gnu`` → ELF,
    ``x86_64-apple-macosx10.15`` → Mach-O); it defaults to the host's.
    Returns the object bytes and the object's name (``foo.s`` → ``foo.o``).
    An assembly error raises :class:`MalformedObjectError` carrying the
    assembler's message with ``name`` and the line and column it points at.
    """
    # -P: a file in the caller's working directory must not shadow llvmlite.
    proc = subprocess.run(
        [sys.executable, "-P", "-c", _CHILD, triple or ""],
        input=_module_asm(source).encode("ascii"),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        message = proc.stderr.decode("utf-8", "replace").strip()
        message = message.replace(_INLINE_ASM, name)
        message = message.removeprefix("error: ")
        if not message.startswith(name + ":"):
            message = f"{name}: {message or 'the assembler failed'}"
        raise MalformedObjectError(message)
    return proc.stdout, object_name(name)


__all__ = ["assemble", "object_name"]
