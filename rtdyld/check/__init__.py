"""Checks on linked memory, in the language of LLVM's ``llvm-rtdyld
-verify`` and ``llvm-jitlink -check``.

``extract_checks`` finds the ``# rtdyld-check: LHS = RHS`` lines of a source
file, ``evaluate`` computes both sides against a :class:`CheckEnv` (which a
finished link provides) and says whether they agree.  See
:mod:`rtdyld.check.expr` for the grammar and :mod:`rtdyld.check.operands`
for how ``decode_operand`` numbers an instruction's operands.
"""

from rtdyld.check.expr import Equation, evaluate, parse
from rtdyld.check.extract import DEFAULT_PREFIXES, extract_checks
from rtdyld.check.model import Check, CheckEnv, CheckError, CheckResult
from rtdyld.check.operands import Instruction, Operand, decode

__all__ = [
    "DEFAULT_PREFIXES",
    "Check",
    "CheckEnv",
    "CheckError",
    "CheckResult",
    "Equation",
    "Instruction",
    "Operand",
    "decode",
    "evaluate",
    "extract_checks",
    "parse",
]
