"""The expression language of LLVM's RuntimeDyldChecker (``rtdyld-check``)
and JITLink's checker (``jitlink-check``): parsing and evaluation.

A check is ``LHS = RHS``; it passes when both sides have the same value.
The grammar is LLVM's::

    expr    := simple (binop simple)*          left to right, no precedence
    binop   := '+' | '-' | '&' | '|' | '<<' | '>>'
    simple  := (number | symbol | '(' expr ')' | load | builtin) slice?
    slice   := '[' number ':' number ']'       bits hi..lo, shifted down
    load    := '*{' size '}' expr               size 1..8 bytes, little-endian;
                                                the address is the whole expr
                                                that follows (``*{4}a + 4``
                                                reads at a + 4), as in LLVM
    builtin := decode_operand(label [+ number], index)
             | next_pc(label)
             | section_addr(file, section)
             | got_addr(file, symbol)
             | stub_addr(file, symbol) | stub_addr(file/section, symbol)

Numbers are decimal or ``0x`` hex; as in LLVM a leading ``0`` makes a number
octal.  A symbol starts with a letter or ``_`` and goes on with letters,
digits, ``_``, ``.``, ``$`` and ``:``.  A file name runs to the next ``,``
and a section name to the next ``)``, so ``test.o`` and ``__TEXT,__text``
need no quoting.  Values are unsigned 64-bit; arithmetic wraps.

White space between tokens never matters here (LLVM rejects some of it, such
as a space after a number before an operator: everything it accepts means
the same here).
"""

from __future__ import annotations

from dataclasses import dataclass
from string import ascii_letters, digits

from rtdyld.check.model import Check, CheckEnv, CheckError, CheckResult
from rtdyld.check.operands import MAX_INSTRUCTION_SIZE, Instruction, decode

MASK = (1 << 64) - 1

_SYMBOL_START = frozenset(ascii_letters + "_")
_SYMBOL_CHARS = frozenset(ascii_letters + digits + "_.$:")
_DIGITS = frozenset(digits)
_HEX_DIGITS = frozenset(digits + "abcdefABCDEF")
_BINOPS = ("<<", ">>", "+", "-", "&", "|")


@dataclass(frozen=True)
class Node:
    """An expression; ``pos`` is its offset in the check's text."""

    pos: int


@dataclass(frozen=True)
class Number(Node):
    value: int


@dataclass(frozen=True)
class Symbol(Node):
    name: str


@dataclass(frozen=True)
class BinOp(Node):
    op: str
    lhs: Node
    rhs: Node


@dataclass(frozen=True)
class Load(Node):
    size: int
    address: Node


@dataclass(frozen=True)
class Slice(Node):
    operand: Node
    high: int
    low: int


@dataclass(frozen=True)
class DecodeOperand(Node):
    label: str
    offset: int
    index: int


@dataclass(frozen=True)
class NextPC(Node):
    label: str


@dataclass(frozen=True)
class SectionAddr(Node):
    file: str
    section: str


@dataclass(frozen=True)
class GotAddr(Node):
    file: str
    symbol: str


@dataclass(frozen=True)
class StubAddr(Node):
    file: str
    section: str | None
    symbol: str


@dataclass(frozen=True)
class Equation:
    """A parsed check: the two sides of ``LHS = RHS``."""

    lhs: Node
    rhs: Node


def located_error(check: Check, offset: int, message: str) -> CheckError:
    """A :class:`CheckError` at ``check.text[offset]``: ``file:line:col:
    message`` followed by the check with a caret under the offending spot."""
    line, column = check.locate(offset)
    body = check.text.strip()
    lead = len(check.text) - len(check.text.lstrip())
    caret = " " * max(0, min(offset - lead, len(body))) + "^"
    return CheckError(
        f"{check.source}:{line}:{column}: {message}\n  {body}\n  {caret}",
        source=check.source,
        line=line,
        column=column,
    )


class _Parser:
    def __init__(self, check: Check):
        self.check = check
        self.text = check.text
        self.pos = 0
        self.end = len(self.text)

    # -- scanning -------------------------------------------------------

    def fail(self, message: str, pos: int | None = None) -> CheckError:
        return located_error(self.check, self.pos if pos is None else pos, message)

    def skip(self) -> None:
        while self.pos < self.end and self.text[self.pos].isspace():
            self.pos += 1

    def at(self, token: str) -> bool:
        return self.pos + len(token) <= self.end and self.text.startswith(token, self.pos)

    def token(self) -> str:
        """The token at the current position, for messages."""
        if self.pos >= self.end:
            return "end of expression"
        rest = self.text[self.pos : self.end]
        if rest[0] in _SYMBOL_CHARS:
            n = next((i for i, ch in enumerate(rest) if ch not in _SYMBOL_CHARS), len(rest))
            return repr(rest[:n])
        return repr(rest[:2] if rest[:2] in ("<<", ">>") else rest[0])

    def expect(self, token: str, context: str) -> None:
        self.skip()
        if not self.at(token):
            raise self.fail(f"expected '{token}' {context}, found {self.token()}")
        self.pos += len(token)

    def number(self, what: str) -> int:
        self.skip()
        start = self.pos
        if self.at("0x"):
            self.pos += 2
            while self.pos < self.end and self.text[self.pos] in _HEX_DIGITS:
                self.pos += 1
            if self.pos == start + 2:
                raise self.fail("expected hex digits after '0x'")
            value = int(self.text[start + 2 : self.pos], 16)
        else:
            while self.pos < self.end and self.text[self.pos] in _DIGITS:
                self.pos += 1
            literal = self.text[start : self.pos]
            if not literal:
                raise self.fail(f"expected {what}, found {self.token()}")
            if len(literal) > 1 and literal[0] == "0":
                if set(literal) & {"8", "9"}:
                    raise self.fail(f"invalid octal number '{literal}' (a leading 0 means octal)", start)
                value = int(literal, 8)
            else:
                value = int(literal)
        if value > MASK:
            raise self.fail("number does not fit in 64 bits", start)
        return value

    def symbol(self, what: str) -> str:
        self.skip()
        start = self.pos
        if self.pos < self.end and self.text[self.pos] in _SYMBOL_START:
            while self.pos < self.end and self.text[self.pos] in _SYMBOL_CHARS:
                self.pos += 1
        if self.pos == start:
            raise self.fail(f"expected {what}, found {self.token()}")
        return self.text[start : self.pos]

    def raw_until(self, stop: str, what: str) -> str:
        """Text up to (not including) the next ``stop``: file and section
        names may hold characters no symbol may."""
        self.skip()
        start = self.pos
        found = self.text.find(stop, start, self.end)
        if found < 0:
            raise self.fail(f"expected '{stop}' after {what}", start)
        self.pos = found
        value = self.text[start:found].strip()
        if not value:
            raise self.fail(f"expected {what}, found {self.token()}", start)
        return value

    # -- grammar --------------------------------------------------------

    def parse(self) -> Equation:
        if not self.text.strip():
            raise self.fail("empty check: expected 'LHS = RHS'", 0)
        equals = self.text.find("=")
        if equals < 0:
            raise self.fail("expected '=' between the two sides of the check", len(self.text.rstrip()))
        self.end = equals
        lhs = self.side("before '='")
        self.pos, self.end = equals + 1, len(self.text)
        rhs = self.side("after '='")
        return Equation(lhs, rhs)

    def side(self, where: str) -> Node:
        self.skip()
        if self.pos >= self.end:
            raise self.fail(f"expected an expression {where}")
        node = self.expr()
        self.skip()
        if self.pos < self.end:
            raise self.fail(f"unexpected {self.token()}: expected a binary operator or the end of the expression")
        return node

    def expr(self) -> Node:
        node = self.simple()
        while True:
            self.skip()
            op = next((op for op in _BINOPS if self.at(op)), None)
            if op is None:
                return node
            pos = self.pos
            self.pos += len(op)
            node = BinOp(pos, op, node, self.simple())

    def simple(self) -> Node:
        self.skip()
        start = self.pos
        if self.pos >= self.end:
            raise self.fail("unexpected end of expression: expected '(', '*', a symbol or a number")
        char = self.text[self.pos]
        if char == "(":
            self.pos += 1
            node = self.expr()
            self.expect(")", "to close '('")
        elif char == "*":
            node = self.load()
        elif char in _SYMBOL_START:
            node = self.identifier()
        elif char in _DIGITS:
            node = Number(start, self.number("a number"))
        else:
            raise self.fail(f"unexpected {self.token()}: expected '(', '*', a symbol or a number")
        self.skip()
        if self.at("["):
            node = self.slice(node)
        return node

    def load(self) -> Node:
        start = self.pos
        self.pos += 1
        self.expect("{", "after '*' (a load is '*{SIZE}ADDRESS')")
        size_pos = self.pos
        size = self.number("a load size")
        if not 1 <= size <= 8:
            raise self.fail(f"invalid load size {size}: expected 1 to 8 bytes", size_pos)
        self.expect("}", "after the load size")
        return Load(start, size, self.expr())

    def slice(self, operand: Node) -> Node:
        start = self.pos
        self.pos += 1
        high = self.number("the high bit of a slice")
        self.expect(":", "in a slice '[HIGH:LOW]'")
        low = self.number("the low bit of a slice")
        self.expect("]", "to close the slice")
        if not low <= high < 64:
            raise self.fail(f"invalid slice [{high}:{low}]: need 63 >= HIGH >= LOW", start)
        return Slice(start, operand, high, low)

    def identifier(self) -> Node:
        start = self.pos
        name = self.symbol("a symbol")
        builtin = _BUILTINS.get(name)
        if builtin is None:
            return Symbol(start, name)
        self.expect("(", f"after '{name}'")
        node = builtin(self, start)
        self.expect(")", f"to close '{name}('")
        return node

    def decode_operand(self, start: int) -> Node:
        label = self.symbol("an instruction label")
        offset = 0
        self.skip()
        if self.at("+"):
            self.pos += 1
            offset = self.number("an offset after '+'")
        elif not self.at(","):
            raise self.fail(f"expected '+' for an offset or ',' before the operand index, found {self.token()}")
        self.expect(",", "before the operand index")
        return DecodeOperand(start, label, offset, self.number("an operand index"))

    def next_pc(self, start: int) -> Node:
        return NextPC(start, self.symbol("an instruction label"))

    def section_addr(self, start: int) -> Node:
        file = self.raw_until(",", "a file name")
        self.expect(",", "after the file name")
        return SectionAddr(start, file, self.raw_until(")", "a section name"))

    def _container_and_symbol(self, name: str) -> tuple[str, str | None, str]:
        container = self.raw_until(",", "a file name")
        self.expect(",", "after the file name")
        symbol = self.symbol("a symbol")
        self.skip()
        if self.at(","):
            raise self.fail(f"{name}: stub kind filters are not supported")
        file, slash, section = container.rpartition("/")
        if not slash:
            return container, None, symbol
        if not file or not section:
            raise self.fail(f"{name}: expected FILE/SECTION, found '{container}'")
        return file, section, symbol

    def got_addr(self, start: int) -> Node:
        file, _section, symbol = self._container_and_symbol("got_addr")
        return GotAddr(start, file, symbol)

    def stub_addr(self, start: int) -> Node:
        file, section, symbol = self._container_and_symbol("stub_addr")
        return StubAddr(start, file, section, symbol)


_BUILTINS = {
    "decode_operand": _Parser.decode_operand,
    "next_pc": _Parser.next_pc,
    "section_addr": _Parser.section_addr,
    "got_addr": _Parser.got_addr,
    "stub_addr": _Parser.stub_addr,
}


def parse(check: Check) -> Equation:
    """Parse ``check.text``; a syntax error raises :class:`CheckError` naming
    the file, line and column, with a caret under the offending token."""
    return _Parser(check).parse()


class _Evaluator:
    def __init__(self, check: Check, env: CheckEnv):
        self.check = check
        self.env = env

    def fail(self, node: Node, message: str) -> CheckError:
        return located_error(self.check, node.pos, message)

    def ask(self, node: Node, method, *args):
        try:
            return method(*args)
        except CheckError as exc:
            if exc.line is not None:
                raise
            raise self.fail(node, str(exc)) from exc

    def instruction(self, node: Node, label: str, offset: int) -> Instruction:
        address = (self.ask(node, self.env.symbol_address, label) + offset) & MASK
        code = self.ask(node, self.env.read_memory, address, MAX_INSTRUCTION_SIZE)
        try:
            return decode(code, address)
        except CheckError as exc:
            raise self.fail(node, f"'{label}': {exc}") from exc

    def value(self, node: Node) -> int:
        match node:
            case Number(value=value):
                return value
            case Symbol(name=name):
                return self.ask(node, self.env.symbol_address, name) & MASK
            case BinOp(op=op, lhs=lhs, rhs=rhs):
                return _binop(op, self.value(lhs), self.value(rhs))
            case Load(size=size, address=address_node):
                address = self.value(address_node)
                data = self.ask(node, self.env.read_memory, address, size)
                if len(data) < size:
                    raise self.fail(node, f"cannot load {size} bytes at {address:#x}: only {len(data)} are linked")
                return int.from_bytes(bytes(data[:size]), "little")
            case Slice(operand=operand, high=high, low=low):
                return (self.value(operand) >> low) & ((1 << (high - low + 1)) - 1)
            case DecodeOperand(label=label, offset=offset, index=index):
                return self.operand(node, self.instruction(node, label, offset), label, index)
            case NextPC(label=label):
                return self.instruction(node, label, 0).next_pc & MASK
            case SectionAddr(file=file, section=section):
                return self.ask(node, self.env.section_address, file, section) & MASK
            case GotAddr(file=file, symbol=symbol):
                return self.ask(node, self.env.got_address, file, symbol) & MASK
            case StubAddr(file=file, section=section, symbol=symbol):
                return self.ask(node, self.env.stub_address, file, section, symbol) & MASK
        raise TypeError(f"not a check expression node: {node!r}")

    def operand(self, node: Node, insn: Instruction, label: str, index: int) -> int:
        where = f"instruction '{label}' ({insn.text})"
        if index >= len(insn.operands):
            raise self.fail(
                node, f"invalid operand index {index} for {where}: it has only {len(insn.operands)} operands"
            )
        operand = insn.operands[index]
        if operand.kind != "imm":
            raise self.fail(node, f"operand {index} of {where} is not an immediate ({operand})")
        return operand.value & MASK


def _binop(op: str, lhs: int, rhs: int) -> int:
    if op == "+":
        return (lhs + rhs) & MASK
    if op == "-":
        return (lhs - rhs) & MASK
    if op == "&":
        return lhs & rhs
    if op == "|":
        return lhs | rhs
    if rhs >= 64:
        return 0
    return (lhs << rhs) & MASK if op == "<<" else lhs >> rhs


def evaluate(check: Check, env: CheckEnv) -> CheckResult:
    """Evaluate ``check`` against a finished link.

    Returns both sides' values; ``result.passed`` says whether they agree and
    ``result.message`` says so in one line.  A check that cannot be evaluated
    (syntax error, unknown symbol, unreadable memory, an operand that is not
    an immediate) raises :class:`CheckError` pointing into the check."""
    equation = parse(check)
    evaluator = _Evaluator(check, env)
    return CheckResult(check, evaluator.value(equation.lhs), evaluator.value(equation.rhs))


__all__ = [
    "MASK",
    "BinOp",
    "DecodeOperand",
    "Equation",
    "GotAddr",
    "Load",
    "NextPC",
    "Node",
    "Number",
    "SectionAddr",
    "Slice",
    "StubAddr",
    "Symbol",
    "evaluate",
    "located_error",
    "parse",
]
