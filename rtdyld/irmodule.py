"""Compile LLVM IR (text, bitcode or an llvmlite module) to an object.

llvmlite is imported only here, so linking plain objects never pays for it.
"""

from __future__ import annotations

from .errors import MalformedObjectError


def _llvm():
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # Without the parser, inline asm makes LLVM abort the whole process.
    llvm.initialize_native_asmparser()
    return llvm


def target_machine(triple: str | None = None, reloc: str = "pic", code_model: str = "small", opt: int = 2,
                   cpu: str = "", features: str = ""):
    llvm = _llvm()
    if triple and "apple" in triple:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
    target = llvm.Target.from_triple(triple) if triple else llvm.Target.from_default_triple()
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc=reloc, codemodel=code_model)


def parse_module(src, name: str | None = None):
    """An llvmlite ModuleRef from IR text, bitcode bytes or a ModuleRef."""
    llvm = _llvm()
    if isinstance(src, llvm.ModuleRef):
        return src
    try:
        if isinstance(src, (bytes, bytearray)) and bytes(src[:2]) == b"BC":
            mod = llvm.parse_bitcode(bytes(src))
        else:
            text = src.decode() if isinstance(src, (bytes, bytearray)) else str(src)
            mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise MalformedObjectError(f"{name or '<module>'}: invalid LLVM IR: {str(e).strip()}") from None
    if name:
        mod.name = name
    return mod


def compile_module(src, name: str | None = None, reloc: str = "pic", code_model: str = "small",
                   opt: int = 2, triple: str | None = None) -> tuple[bytes, str]:
    """Object bytes for a module, and the name to show for it."""
    mod = parse_module(src, name)
    if triple is None and mod.triple:
        triple = mod.triple
    tm = target_machine(triple, reloc, code_model, opt)
    if not mod.triple:
        mod.triple = tm.triple
    return tm.emit_object(mod), name or mod.name or "<module>"
