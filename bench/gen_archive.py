"""A large generated static archive and a program that needs every member of it.

Member ``k`` of ``MEMBERS`` defines ``FUNCTIONS`` functions ``m<k>_f<j>``, a
table ``m<k>_data`` of constants and a table ``m<k>_table`` of pointers to
its functions.  ``m<k>_f<j>(x)`` is ``m<k>_data[j] + x`` plus, except in the
last member, ``m<k+1>_table[j](x)``: each member needs the next one, so lazy
extraction pulls every member, one round at a time.  Per function there is a
PC-relative data load and a GOT load of the next member's table, per table
entry an absolute pointer, so the relocation count is about
``3 * FUNCTIONS * MEMBERS``.  The program defines ``gen_check(x)``, the sum
of ``(j + 1) * m0_f<j>(x)``, worked out here too so a link can be checked.

Members are LLVM IR compiled by llvmlite (PIC, small code model, opt 0) and
archived with ``ar``; both are cached on disk like :mod:`bench.gen`'s objects.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .gen import _atomic_write, cache_dir

GEN_VERSION = 1
MEMBERS = 120
FUNCTIONS = 64
ENTRY = "gen_check"
SEED_ARG = 7
MASK = (1 << 64) - 1


@dataclass(frozen=True)
class GeneratedArchive:
    program: bytes  # the object that calls into the archive
    archive: Path
    members: int
    expected_check: int  # gen_check(SEED_ARG)


def make_archive(members: int = MEMBERS, functions: int = FUNCTIONS, seed: int = 1) -> GeneratedArchive:
    """The cached archive and program (compiled and archived on first use)."""
    import llvmlite.binding as llvm

    data = _data(members, functions, seed)
    parts = [GEN_VERSION, members, functions, seed, ".".join(map(str, llvm.llvm_version_info))]
    key = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    archive = cache_dir() / f"genarchive-{members}x{functions}-{key}.a"
    program = cache_dir() / f"genarchive-{members}x{functions}-{key}-prog.o"
    if not (archive.exists() and program.exists()):
        tm = _target_machine(llvm)
        objects = []
        for k in range(members):
            obj = cache_dir() / f"genarchive-{key}-m{k:03d}.o"
            _atomic_write(obj, _compile(llvm, tm, _member_ir(k, members, functions, data[k])))
            objects.append(obj)
        tmp = archive.with_suffix(".tmp.a")
        tmp.unlink(missing_ok=True)
        subprocess.run(["ar", "rcs", str(tmp), *map(str, objects)], check=True, capture_output=True)
        tmp.replace(archive)
        for obj in objects:
            obj.unlink()
        _atomic_write(program, _compile(llvm, tm, _program_ir(functions)))
    return GeneratedArchive(program.read_bytes(), archive, members, _expected(data, functions, SEED_ARG))


def _data(members: int, functions: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.getrandbits(63) for _ in range(functions)] for _ in range(members)]


def _expected(data: list[list[int]], functions: int, x: int) -> int:
    total = 0
    for j in range(functions):
        f0 = (sum(d[j] for d in data) + len(data) * x) & MASK
        total = (total + (j + 1) * f0) & MASK
    return total


def _member_ir(k: int, members: int, functions: int, data: list[int]) -> str:
    n = functions
    lines = [
        f"@m{k}_data = dso_local global [{n} x i64] [" + ", ".join(f"i64 {v}" for v in data) + "]",
        f"@m{k}_table = global [{n} x ptr] [" + ", ".join(f"ptr @m{k}_f{j}" for j in range(n)) + "]",
    ]
    last = k + 1 == members
    if not last:
        lines.append(f"@m{k + 1}_table = external global [{n} x ptr]")
    for j in range(n):
        body = [
            f"  %p = getelementptr inbounds [{n} x i64], ptr @m{k}_data, i64 0, i64 {j}",
            "  %d = load i64, ptr %p",
            "  %s = add i64 %d, %x",
        ]
        if last:
            body.append("  ret i64 %s")
        else:
            body += [
                f"  %tp = getelementptr inbounds [{n} x ptr], ptr @m{k + 1}_table, i64 0, i64 {j}",
                "  %f = load ptr, ptr %tp",
                "  %r = call i64 %f(i64 %x)",
                "  %t = add i64 %s, %r",
                "  ret i64 %t",
            ]
        lines += [f"define i64 @m{k}_f{j}(i64 %x) {{", *body, "}"]
    return "\n".join(lines) + "\n"


def _program_ir(functions: int) -> str:
    lines = [f"declare i64 @m0_f{j}(i64)" for j in range(functions)]
    lines += [f"define i64 @{ENTRY}(i64 %x) {{", "  %a0 = add i64 0, 0"]
    for j in range(functions):
        lines += [
            f"  %v{j} = call i64 @m0_f{j}(i64 %x)",
            f"  %w{j} = mul i64 %v{j}, {j + 1}",
            f"  %a{j + 1} = add i64 %a{j}, %w{j}",
        ]
    lines += [f"  ret i64 %a{functions}", "}"]
    return "\n".join(lines) + "\n"


def _target_machine(llvm):
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    return llvm.Target.from_default_triple().create_target_machine(reloc="pic", codemodel="small", opt=0)


def _compile(llvm, tm, ir: str) -> bytes:
    module = llvm.parse_assembly(ir)
    module.triple = tm.triple
    module.verify()
    return tm.emit_object(module)
