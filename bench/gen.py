"""Large relocatable objects for benchmarks, sized by their relocation count.

The object is LLVM IR generated here and compiled by llvmlite at opt=0 (quick
to compile; compiling is not what the benchmarks measure).  It holds
``units`` functions ``bench_f<i>`` that load globals (through the GOT and
PC-relative), call shared leaf functions, read a byte of their own string
constant, and are listed in a function-pointer table; ``bench_check(seed)``
calls every function through the table and folds the results, and
``bench_pad_ok()`` counts the padding table entries that point where they
should.  Both results are worked out here in Python as well, so a link can be
checked without a second linker.

Every padding entry adds exactly one relocation (an R_X86_64_64 in
.data.rel.ro) and, with PIC and the small code model, every unit the same
number, so the count is ``per_unit * units + padding + fixed``.  Two small
probe compiles per (reloc, code_model) estimate ``per_unit`` and ``fixed``;
the object is compiled at the estimate, counted with rtdyld's ELF reader,
and recompiled with the padding corrected where the estimate was off (the
other code models share GOT and base-address set-up within a function, so
their count per unit varies a little).
Objects are cached on disk, keyed by every parameter and the LLVM version.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

GEN_VERSION = 3
MASK = (1 << 64) - 1

LOADS = 6  # global loads per unit, alternating GOT-indirect and PC-relative
CALLS = 6  # leaf calls per unit
LEAVES = 32
GLOBALS = 64  # of each kind: preemptible (GOT) and dso_local (PC-relative)
MIN_RELOCS = 500

ENTRY = "bench_check"
ENTRY_SIGNATURE = "uint64_t(uint64_t)"
PAD_CHECK = "bench_pad_ok"
PAD_SIGNATURE = "uint64_t(void)"
SEED_ARG = 7


@dataclass(frozen=True)
class Generated:
    """A compiled benchmark object and what calling into it must return."""

    data: bytes
    name: str
    relocs: int  # as counted by rtdyld's ELF reader
    units: int
    padding: int
    reloc: str
    code_model: str
    expected_check: int  # bench_check(SEED_ARG)
    expected_pad_ok: int  # bench_pad_ok()


def cache_dir() -> Path:
    """Where compiled objects are kept: $RTDYLD_BENCH_CACHE or a temp directory."""
    env = os.environ.get("RTDYLD_BENCH_CACHE")
    path = Path(env) if env else Path(tempfile.gettempdir()) / "rtdyld-bench-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_object(relocs: int = 50_000, reloc: str = "pic", code_model: str = "small") -> bytes:
    """Bytes of an x86-64 ELF object with exactly ``relocs`` relocations."""
    return make(relocs, reloc, code_model).data


def make(relocs: int = 50_000, reloc: str = "pic", code_model: str = "small", seed: int = 1) -> Generated:
    """A cached :class:`Generated` object with exactly ``relocs`` relocations."""
    if relocs < MIN_RELOCS:
        raise ValueError(f"relocs must be at least {MIN_RELOCS}, got {relocs}")
    key = _key("object", relocs, reloc, code_model, seed)
    cached = _load(key)
    if cached is not None:
        return cached
    per_unit, fixed = _calibrate(reloc, code_model)
    units = max(1, (relocs - fixed) // per_unit)
    padding = relocs - fixed - per_unit * units
    for _ in range(4):
        gen = _build(units, padding, reloc, code_model, seed)
        if gen.relocs == relocs:
            break
        padding += relocs - gen.relocs
        if padding < 0:
            cut = -padding // per_unit + 1
            units, padding = units - cut, padding + cut * per_unit
            if units < 1:
                raise ValueError(f"cannot make an object as small as {relocs} relocations ({reloc}/{code_model})")
    else:
        raise RuntimeError(f"generated object has {gen.relocs} relocations, wanted {relocs}")
    _store(key, gen)
    return gen


def count_relocs(data: bytes, name: str = "<bench>") -> int:
    """Relocations in an object, as rtdyld's ELF reader sees them."""
    from rtdyld.objfile.elf import read_elf

    return len(read_elf(data, name).relocs)


# --- calibration and caching ------------------------------------------------------


def _calibrate(reloc: str, code_model: str) -> tuple[int, int]:
    key = _key("calibration", 0, reloc, code_model, 0)
    path = cache_dir() / f"{key}.json"
    if path.exists():
        per_unit, fixed = json.loads(path.read_text())
        return per_unit, fixed
    a = _build(4, 0, reloc, code_model, 0).relocs
    b = _build(8, 0, reloc, code_model, 0).relocs
    per_unit = (b - a) // 4
    fixed = a - 4 * per_unit
    _atomic_write(path, json.dumps([per_unit, fixed]).encode())
    return per_unit, fixed


def _key(kind: str, relocs: int, reloc: str, code_model: str, seed: int) -> str:
    import llvmlite.binding as llvm

    parts = [
        kind,
        GEN_VERSION,
        relocs,
        reloc,
        code_model,
        seed,
        LOADS,
        CALLS,
        LEAVES,
        GLOBALS,
        ".".join(map(str, llvm.llvm_version_info)),
        llvm.get_default_triple(),
    ]
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    return f"{kind}-{relocs}-{reloc}-{code_model}-{digest}"


def _load(key: str) -> Generated | None:
    obj, meta = cache_dir() / f"{key}.o", cache_dir() / f"{key}.json"
    if not (obj.exists() and meta.exists()):
        return None
    try:
        fields = json.loads(meta.read_text())
        return Generated(data=obj.read_bytes(), **fields)
    except (OSError, ValueError, TypeError):
        return None


def _store(key: str, gen: Generated) -> None:
    fields = asdict(gen)
    del fields["data"]
    _atomic_write(cache_dir() / f"{key}.o", gen.data)
    _atomic_write(cache_dir() / f"{key}.json", json.dumps(fields).encode())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --- the program ---------------------------------------------------------------------


@dataclass
class _Program:
    units: int
    padding: int
    g: list[int]  # preemptible globals
    h: list[int]  # dso_local globals
    mult: list[int]  # per unit
    loads: list[list[int]]  # per unit: global numbers; even positions are g, odd are h
    calls: list[list[int]]  # per unit: leaf numbers
    strings: list[bytes]  # per unit
    pick: list[int]  # per unit: which byte of its string it reads


def _program(units: int, padding: int, seed: int) -> _Program:
    rng = random.Random(seed)
    return _Program(
        units=units,
        padding=padding,
        g=[rng.getrandbits(64) for _ in range(GLOBALS)],
        h=[rng.getrandbits(64) for _ in range(GLOBALS)],
        mult=[rng.getrandbits(64) | 1 for _ in range(units)],
        loads=[[rng.randrange(GLOBALS) for _ in range(LOADS)] for _ in range(units)],
        calls=[[rng.randrange(LEAVES) for _ in range(CALLS)] for _ in range(units)],
        strings=[f"unit {i} of {units}: {rng.getrandbits(32):08x}".encode() for i in range(units)],
        pick=[rng.randrange(8) for _ in range(units)],
    )


def _leaf(p: _Program, k: int, x: int) -> int:
    return ((x ^ p.h[k % GLOBALS]) + k) & MASK


def _unit(p: _Program, i: int, x: int) -> int:
    t = (x * p.mult[i]) & MASK
    for j, n in enumerate(p.loads[i]):
        t ^= p.g[n] if j % 2 == 0 else p.h[n]
        t = (t + (t << 7)) & MASK
    for k in p.calls[i]:
        t = (t + _leaf(p, k, x)) & MASK
    return (t + p.strings[i][p.pick[i]]) & MASK


def _expected_check(p: _Program, seed: int) -> int:
    acc = abs(seed - 1000)
    for i in range(p.units):
        acc = (acc * 31 + _unit(p, i, (seed + i) & MASK)) & MASK
    return acc


def _ir(p: _Program) -> str:
    out = [f"@bench_g{j} = global i64 {_signed(v)}" for j, v in enumerate(p.g)]
    out += [f"@bench_h{j} = dso_local global i64 {_signed(v)}" for j, v in enumerate(p.h)]
    for i, s in enumerate(p.strings):
        out.append(f'@.str{i} = private unnamed_addr constant [{len(s) + 1} x i8] c"{s.decode()}\\00"')
    # Leaves are preemptible, so every call to them is an R_X86_64_PLT32 (calls to
    # internal functions in the same section are resolved by the assembler).
    for k in range(LEAVES):
        out.append(
            f"define i64 @bench_leaf{k}(i64 %x) {{\n"
            f"  %h = load i64, ptr @bench_h{k % GLOBALS}\n"
            f"  %a = xor i64 %x, %h\n"
            f"  %r = add i64 %a, {k}\n"
            f"  ret i64 %r\n}}"
        )
    for i in range(p.units):
        # Half the units are local symbols: references to them go through the
        # section symbol, as for static functions in C.
        linkage = "internal " if i % 2 else ""
        body = [f"define {linkage}i64 @bench_f{i}(i64 %x) {{", f"  %t0 = mul i64 %x, {_signed(p.mult[i])}"]
        t = 0
        for j, n in enumerate(p.loads[i]):
            name = f"bench_g{n}" if j % 2 == 0 else f"bench_h{n}"
            body += [
                f"  %l{j} = load i64, ptr @{name}",
                f"  %x{j} = xor i64 %t{t}, %l{j}",
                f"  %s{j} = shl i64 %x{j}, 7",
                f"  %t{t + 1} = add i64 %x{j}, %s{j}",
            ]
            t += 1
        for j, k in enumerate(p.calls[i]):
            body += [f"  %c{j} = call i64 @bench_leaf{k}(i64 %x)", f"  %t{t + 1} = add i64 %t{t}, %c{j}"]
            t += 1
        body += [
            f"  %bp = getelementptr inbounds i8, ptr @.str{i}, i64 {p.pick[i]}",
            "  %b = load i8, ptr %bp",
            "  %bz = zext i8 %b to i64",
            f"  %r = add i64 %t{t}, %bz",
            "  ret i64 %r",
            "}",
        ]
        out.append("\n".join(body))
    n = p.units
    out.append(f"@bench_table = constant [{n} x ptr] [" + ", ".join(f"ptr @bench_f{i}" for i in range(n)) + "]")
    pad = ", ".join(f"ptr @bench_f{j % n}" for j in range(p.padding))
    out.append(f"@bench_pad = constant [{p.padding} x ptr] [{pad}]")
    out.append(_check_ir(n))
    out.append(_pad_ok_ir(n, p.padding))
    out.append("declare i64 @labs(i64)")
    return "\n\n".join(out) + "\n"


def _check_ir(n: int) -> str:
    return f"""define i64 @{ENTRY}(i64 %seed) {{
entry:
  %d = sub i64 %seed, 1000
  %acc0 = call i64 @labs(i64 %d)
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %acc = phi i64 [ %acc0, %entry ], [ %acc1, %loop ]
  %fp = getelementptr inbounds [{n} x ptr], ptr @bench_table, i64 0, i64 %i
  %f = load ptr, ptr %fp
  %arg = add i64 %seed, %i
  %v = call i64 %f(i64 %arg)
  %m = mul i64 %acc, 31
  %acc1 = add i64 %m, %v
  %i1 = add i64 %i, 1
  %done = icmp eq i64 %i1, {n}
  br i1 %done, label %exit, label %loop
exit:
  ret i64 %acc1
}}"""


def _pad_ok_ir(n: int, padding: int) -> str:
    return f"""define i64 @{PAD_CHECK}() {{
entry:
  br label %head
head:
  %j = phi i64 [ 0, %entry ], [ %j1, %body ]
  %ok = phi i64 [ 0, %entry ], [ %ok1, %body ]
  %more = icmp ult i64 %j, {padding}
  br i1 %more, label %body, label %exit
body:
  %pp = getelementptr inbounds [{padding} x ptr], ptr @bench_pad, i64 0, i64 %j
  %p = load ptr, ptr %pp
  %k = urem i64 %j, {n}
  %tp = getelementptr inbounds [{n} x ptr], ptr @bench_table, i64 0, i64 %k
  %t = load ptr, ptr %tp
  %same = icmp eq ptr %p, %t
  %one = zext i1 %same to i64
  %ok1 = add i64 %ok, %one
  %j1 = add i64 %j, 1
  br label %head
exit:
  ret i64 %ok
}}"""


def _signed(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


def _build(units: int, padding: int, reloc: str, code_model: str, seed: int) -> Generated:
    from rtdyld.irmodule import compile_module

    p = _program(units, padding, seed)
    name = f"bench-{units}u-{padding}p-{reloc}-{code_model}.o"
    data, _ = compile_module(_ir(p), name, reloc=reloc, code_model=code_model, opt=0)
    return Generated(
        data=data,
        name=name,
        relocs=count_relocs(data, name),
        units=units,
        padding=padding,
        reloc=reloc,
        code_model=code_model,
        expected_check=_expected_check(p, SEED_ARG),
        expected_pad_ok=padding,
    )
