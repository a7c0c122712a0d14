"""A toy language whose functions are compiled only when first called.

The language (all values are doubles)::

    extern sin(x);                      # a function of the process (libm)
    def fib(n) if n < 2 then n else fib(n - 1) + fib(n - 2);
    fib(20);                            # a top-level expression: evaluated and printed

``def`` registers the function with ``Linker.add_lazy``: nothing is generated
yet, but its name is published (as an indirect stub) so other functions can
be linked against it.  On the first call the resolver enters Python, the
function's AST becomes an llvmlite IR module, rtdyld compiles and links it,
points the stub at it and lets the call proceed.  Top-level expressions are
compiled eagerly into an anonymous function and called through cffi.

Run ``python examples/toy_lazy_jit.py [FILE]``; without a file it runs the
program below.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from llvmlite import ir

import rtdyld

PROGRAM = """
# externs come from the process or from Python
extern sin(x);
extern printd(x);

def fib(n) if n < 2 then n else fib(n - 1) + fib(n - 2);
def is_even(n) if n < 1 then 1 else is_odd(n - 1);
def is_odd(n) if n < 1 then 0 else is_even(n - 1);
def square(x) x * x;
def hyp2(a, b) square(a) + square(b);
def wave(x) printd(sin(x) * 100);
def unused(x) x * 1000;

fib(20);
is_even(7);
hyp2(3, 4);
wave(0.5);
fib(10) / (1 + 1);
"""

# --- syntax ---------------------------------------------------------------------------------------

TOKEN = re.compile(r"\s*(?:(#[^\n]*)|(\d+\.?\d*|\.\d+)|([A-Za-z_]\w*)|(.))", re.DOTALL)
KEYWORDS = {"def", "extern", "if", "then", "else"}
PRECEDENCE = {"<": 10, ">": 10, "+": 20, "-": 20, "*": 40, "/": 40}


@dataclass
class Number:
    value: float


@dataclass
class Var:
    name: str


@dataclass
class Binary:
    op: str
    lhs: object
    rhs: object


@dataclass
class Call:
    callee: str
    args: list


@dataclass
class If:
    cond: object
    then: object
    other: object


@dataclass
class Prototype:
    name: str
    params: list[str]


@dataclass
class Function:
    proto: Prototype
    body: object


def tokenize(text: str) -> list[tuple[str, int, int]]:
    """(token, start, end) for each token; comments and blanks dropped."""
    tokens = []
    for m in TOKEN.finditer(text):
        comment, number, ident, other = m.groups()
        tok = number or ident or other
        if not comment and tok and tok.strip():
            start = m.start(2) if number else m.start(3) if ident else m.start(4)
            tokens.append((tok, start, m.end()))
    return tokens


class Parser:
    """Recursive descent with operator precedence, one top-level item per ';'."""

    def __init__(self, text: str):
        self.text = text
        self.spans = tokenize(text)
        self.toks = [tok for tok, _, _ in self.spans]
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise SyntaxError(f"expected {expected or 'a token'}, found {tok!r}")
        self.i += 1
        return tok

    def items(self):
        while self.peek() is not None:
            start = self.i
            if self.peek() == "def":
                self.take()
                item = Function(self.prototype(), self.expression())
            elif self.peek() == "extern":
                self.take()
                item = self.prototype()
            else:
                item = self.expression()
            source = self.text[self.spans[start][1] : self.spans[self.i - 1][2]]
            self.take(";")
            yield item, source

    def prototype(self) -> Prototype:
        name = self.take()
        return Prototype(name, self.parenthesized(self.take))

    def parenthesized(self, item) -> list:
        """``( item, item, ... )``: each item parsed by ``item()``."""
        self.take("(")
        items = []
        while self.peek() != ")":
            items.append(item())
            if self.peek() == ",":
                self.take()
        self.take(")")
        return items

    def expression(self, min_prec: int = 0):
        lhs = self.primary()
        while (op := self.peek()) in PRECEDENCE and PRECEDENCE[op] > min_prec:
            self.take()
            rhs = self.expression(PRECEDENCE[op])
            lhs = Binary(op, lhs, rhs)
        return lhs

    def primary(self):
        tok = self.take()
        if tok == "(":
            e = self.expression()
            self.take(")")
            return e
        if tok == "if":
            cond = self.expression()
            self.take("then")
            then = self.expression()
            self.take("else")
            return If(cond, then, self.expression())
        if tok[0].isdigit() or tok[0] == ".":
            return Number(float(tok))
        if tok == "-":
            return Binary("-", Number(0.0), self.primary())
        if tok in KEYWORDS or not (tok[0].isalpha() or tok[0] == "_"):
            raise SyntaxError(f"unexpected {tok!r}")
        if self.peek() == "(":
            return Call(tok, self.parenthesized(self.expression))
        return Var(tok)


# --- AST to IR ----------------------------------------------------------------------------------

DOUBLE = ir.DoubleType()


class CodeGen:
    """One function's AST into a module of its own; callees are declarations."""

    def __init__(self, arity: dict[str, int]):
        self.arity = arity

    def module(self, name: str, params: list[str], body) -> ir.Module:
        mod = ir.Module(name=name)
        mod.triple = ""  # llvmlite.ir's placeholder triple would not compile; "" means this machine
        fn = ir.Function(mod, ir.FunctionType(DOUBLE, [DOUBLE] * len(params)), name=name)
        self.mod = mod
        self.builder = ir.IRBuilder(fn.append_basic_block("entry"))
        self.vars = dict(zip(params, fn.args))
        self.builder.ret(self.expr(body))
        return mod

    def callee(self, name: str) -> ir.Function:
        if name in self.mod.globals:
            return self.mod.globals[name]
        if name not in self.arity:
            raise NameError(f"unknown function {name!r}")
        return ir.Function(self.mod, ir.FunctionType(DOUBLE, [DOUBLE] * self.arity[name]), name=name)

    def expr(self, e):
        b = self.builder
        if isinstance(e, Number):
            return ir.Constant(DOUBLE, e.value)
        if isinstance(e, Var):
            if e.name not in self.vars:
                raise NameError(f"unknown variable {e.name!r}")
            return self.vars[e.name]
        if isinstance(e, Binary):
            lhs, rhs = self.expr(e.lhs), self.expr(e.rhs)
            if e.op in "<>":
                flag = b.fcmp_unordered(e.op, lhs, rhs)
                return b.uitofp(flag, DOUBLE)
            return {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv}[e.op](lhs, rhs)
        if isinstance(e, Call):
            fn = self.callee(e.callee)
            if len(fn.args) != len(e.args):
                raise TypeError(f"{e.callee} takes {len(fn.args)} arguments, not {len(e.args)}")
            return b.call(fn, [self.expr(a) for a in e.args])
        if isinstance(e, If):
            cond = b.fcmp_ordered("!=", self.expr(e.cond), ir.Constant(DOUBLE, 0.0))
            with b.if_else(cond) as (then, other):
                with then:
                    then_value = self.expr(e.then)
                    then_block = b.block
                with other:
                    other_value = self.expr(e.other)
                    other_block = b.block
            phi = b.phi(DOUBLE)
            phi.add_incoming(then_value, then_block)
            phi.add_incoming(other_value, other_block)
            return phi
        raise TypeError(f"cannot compile {e!r}")


# --- the JIT ------------------------------------------------------------------------------------


class ToyJIT:
    def __init__(self):
        self.ln = rtdyld.Linker()
        self.arity: dict[str, int] = {}
        self.compiled: list[str] = []
        self.defined: list[str] = []
        self.anon = 0
        self._printd = rtdyld.host.ffi.callback("double(double)", self._print_double)
        self.ln.define("printd", self._printd)

    @staticmethod
    def _print_double(x: float) -> float:
        print(f"printd: {x:.4f}", flush=True)
        return 0.0

    def run(self, text: str) -> None:
        for item, source in Parser(text).items():
            if isinstance(item, Prototype):
                self.arity[item.name] = len(item.params)
            elif isinstance(item, Function):
                self.define(item)
            else:
                print(f"{source} = {self.evaluate(item):g}", flush=True)

    def define(self, fn: Function) -> None:
        name = fn.proto.name
        self.arity[name] = len(fn.proto.params)
        self.defined.append(name)

        def compile_fn():
            # Runs inside the first call of `name`, from the resolver.
            print(f"compiled: {name}", flush=True)
            self.compiled.append(name)
            return str(CodeGen(self.arity).module(name, fn.proto.params, fn.body))

        self.ln.add_lazy(name, compile_fn)

    def evaluate(self, expr) -> float:
        self.anon += 1
        name = f"__anon_{self.anon}"
        module = CodeGen(self.arity).module(name, [], expr)
        self.ln.add_module(str(module), name=name)
        handle = self.ln.finalize()
        try:
            return self.ln.function(name, "double()")()
        finally:
            handle.remove()


def main(argv: list[str]) -> int:
    text = Path(argv[1]).read_text() if len(argv) > 1 else PROGRAM
    jit = ToyJIT()
    jit.run(text)
    for name in jit.defined:
        if name not in jit.compiled:
            print(f"never called, never compiled: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
