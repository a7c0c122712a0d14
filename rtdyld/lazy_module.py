"""Lazy llvmlite modules: each function compiled and linked on its first call.

``Linker.add_module(module, lazy=True)`` splits a module in two kinds of
pieces, all parsed from the module's IR text:

* one *globals* module, added to the pending batch like any module: every
  global variable is defined there, once, and every lazy function is made
  ``available_externally`` (kept as IR, not emitted), so what refers to a
  function (a table of pointers, say) resolves to its stub;
* for each function with external linkage, a *function* module made only
  when the function is first called: that function is defined, every other
  lazy function and every shared global variable is ``available_externally``.

llvmlite's ``emit_object`` runs code generation only (no inliner), so an
``available_externally`` function is never copied into its caller: calls
stay calls to the symbol, which resolves to the callee's stub, and globals
stay references to the one copy in the globals module.

Internal and private globals are renamed and promoted to hidden external
ones first, so that functions compiled into different objects share one copy
of each (a ``static`` counter must not be duplicated).  Internal functions
hold no state of their own and are simply compiled into every piece that
uses them.  Constructor lists are kept in the globals module only.
"""

from __future__ import annotations

import functools
import itertools

from .errors import UsageError
from .symbols import Dylib

_serial = itertools.count(1)

_LOCAL = ("internal", "private")
_CTOR_LISTS = ("@llvm.global_ctors ", "@llvm.global_dtors ")


def add_lazy_module(linker, module, name: str | None = None, reloc: str = "pic", code_model: str = "small",
                    opt: int = 2, triple: str | None = None, dylib: Dylib | None = None):
    """Publish a stub for each external function of ``module`` and add its
    globals to the pending batch; returns the globals' ObjectFile."""
    from .irmodule import parse_module

    display = name or getattr(module, "name", None) or "<module>"
    # A fresh copy to edit, whatever the caller passed (a ModuleRef of theirs is left as it is).
    source = parse_module(module if isinstance(module, (str, bytes, bytearray)) else str(module), name)
    tag = f"__rtdyld_lazy{next(_serial)}"
    for k, g in enumerate(source.global_variables):
        if not g.is_declaration and g.linkage.name in _LOCAL:
            g.name = f"{tag}.{g.name or k}"
            g.linkage = "external"
            g.visibility = "hidden"
    lazy = [f.name for f in source.functions if not f.is_declaration and f.linkage.name == "external"]
    if not lazy:
        raise UsageError(f"{display}: no function with external linkage to compile lazily")
    lazy_names = frozenset(lazy)
    # Every function module starts from this text: the constructor lists stay with the globals.
    text = "".join(line + "\n" for line in str(source).splitlines() if not line.startswith(_CTOR_LISTS))
    options = {"reloc": reloc, "code_model": code_model, "opt": opt, "triple": triple}

    # The globals module is the prepared module itself, its functions kept as IR only.
    for f in source.functions:
        if f.name in lazy_names:
            f.linkage = "available_externally"
    obj = linker.add_module(source, name=f"{display} [globals]", dylib=dylib, **options)
    for fname in lazy:
        compile_fn = functools.partial(function_object, text, fname, lazy_names, f"{display} [{fname}]", options)
        linker.add_lazy(fname, compile_fn, dylib=dylib)
    return obj


def function_object(text: str, fname: str, lazy: frozenset[str], display: str, options: dict):
    """The object defining ``fname`` alone, from the prepared module text."""
    import llvmlite.binding as llvm

    from .inputs import parse_object
    from .irmodule import compile_module

    mod = llvm.parse_assembly(text)
    for f in mod.functions:
        if f.name != fname and f.name in lazy:
            f.linkage = "available_externally"
    for g in mod.global_variables:
        if not g.is_declaration and g.linkage.name == "external":
            g.linkage = "available_externally"
    mod.verify()
    data, shown = compile_module(mod, display, **options)
    return parse_object(data, shown)
