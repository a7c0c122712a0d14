"""Build the test fixtures at test time: C with gcc, LLVM IR with llvmlite.

Nothing built is committed.  A :class:`Builder` compiles each (source, flags)
pair once per session into a pytest temporary directory and hands back the
object's path or bytes; the session fixtures in ``conftest.py`` share one.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
from pathlib import Path

import llvmlite.binding as llvm

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
C_DIR = FIXTURES / "c"
CXX_DIR = FIXTURES / "cxx"
IR_DIR = FIXTURES / "ir"

# The C matrix: optimisation level x code generation model.  gcc's default on
# this platform is -fPIE; it is spelled out so the matrix does not depend on
# how the compiler was configured.
C_OPT_LEVELS = ("-O0", "-O2")
C_MODELS = {
    "pic": ("-fPIC",),
    "pie": ("-fPIE",),
    "nopic": ("-fno-pic",),
    "medium": ("-fPIE", "-mcmodel=medium"),
    "large": ("-fPIE", "-mcmodel=large"),
}
C_FLAG_SETS = {f"{opt[1:]}-{model}": (opt, *flags) for opt in C_OPT_LEVELS for model, flags in C_MODELS.items()}

IR_RELOCS = ("static", "pic")
IR_CODE_MODELS = ("small", "medium", "large")


class BuildError(RuntimeError):
    """A fixture failed to compile: the test environment, not rtdyld, is at fault."""


@functools.cache
def _llvm_ready() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def target_machine(
    reloc: str = "pic", code_model: str = "small", triple: str | None = None, opt: int = 2
) -> llvm.TargetMachine:
    """A target machine for ``triple`` (default: this process's)."""
    _llvm_ready()
    triple = triple or llvm.get_process_triple()
    return llvm.Target.from_triple(triple).create_target_machine(reloc=reloc, codemodel=code_model, opt=opt)


def _key(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


class Builder:
    """Compiles fixtures into ``root``, each (source, flags) pair once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._objects: dict[str, Path] = {}
        self._ir: dict[str, bytes] = {}

    # --- C -------------------------------------------------------------------

    def cc(self, source: str | Path, *flags: str) -> Path:
        """Compile a C file (a path, or a name relative to fixtures/c) to an object."""
        src = self._c_source(source)
        return self._compile("gcc", src, _key(str(src), src.read_bytes(), *flags), flags)

    def cxx(self, source: str | Path, *flags: str) -> Path:
        """Compile a C++ file (a path, or a name relative to fixtures/cxx) with g++."""
        src = Path(source) if Path(source).is_absolute() else CXX_DIR / source
        headers = [p.read_bytes() for p in sorted(src.parent.glob("*.h"))]
        return self._compile("g++", src, _key(str(src), src.read_bytes(), *headers, *flags), flags)

    def _compile(self, compiler: str, src: Path, key: str, flags: tuple[str, ...]) -> Path:
        if key not in self._objects:
            out = self.root / f"{src.stem}-{key}.o"
            self._run([compiler, "-c", *flags, "-o", str(out), str(src)])
            self._objects[key] = out
        return self._objects[key]

    def cc_bytes(self, source: str | Path, *flags: str) -> bytes:
        return self.cc(source, *flags).read_bytes()

    def cc_text(self, text: str, *flags: str, stem: str = "snippet") -> Path:
        """Compile C source given as a string."""
        key = _key(text, *flags)
        src = self.root / f"{stem}-{key}.c"
        if not src.exists():
            src.write_text(text)
        return self.cc(src, *flags)

    def shared_lib(self, source: str | Path, name: str) -> Path:
        """Build ``lib<name>.so`` from a C file into its own directory."""
        src = self._c_source(source)
        key = _key(str(src), src.read_bytes(), name)
        libdir = self.root / f"lib-{key}"
        lib = libdir / f"lib{name}.so"
        if not lib.exists():
            libdir.mkdir(exist_ok=True)
            self._run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src)])
        return lib

    def gcc_accepts(self, *flags: str) -> bool:
        """Whether gcc can compile a trivial file with ``flags`` (e.g. -m32)."""
        try:
            self.cc_text("int probe(void) { return 0; }\n", *flags, stem="probe")
        except BuildError:
            return False
        return True

    # --- LLVM IR ---------------------------------------------------------------

    def ir_text(self, source: str | Path) -> str:
        """The text of an IR fixture (a path, or a name relative to fixtures/ir)."""
        return self._ir_source(source).read_text()

    def ir(
        self,
        source: str | Path,
        reloc: str = "pic",
        code_model: str = "small",
        triple: str | None = None,
        opt: int = 2,
    ) -> bytes:
        """Compile an IR fixture to object bytes with llvmlite's target machine."""
        text = self.ir_text(source)
        triple = triple or llvm.get_process_triple()
        key = _key(text, reloc, code_model, triple, str(opt))
        if key not in self._ir:
            tm = target_machine(reloc, code_model, triple, opt)
            module = llvm.parse_assembly(text)
            module.triple = triple
            module.verify()
            self._ir[key] = tm.emit_object(module)
        return self._ir[key]

    def bitcode_path(self, source: str | Path) -> Path:
        """The IR fixture as a ``.bc`` file."""
        text = self.ir_text(source)
        out = self.root / f"{self._ir_source(source).stem}-{_key(text)}.bc"
        if not out.exists():
            _llvm_ready()
            out.write_bytes(llvm.parse_assembly(text).as_bitcode())
        return out

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def _c_source(source: str | Path) -> Path:
        path = Path(source)
        return path if path.is_absolute() else C_DIR / path

    @staticmethod
    def _ir_source(source: str | Path) -> Path:
        path = Path(source)
        if path.is_absolute():
            return path
        return IR_DIR / path if (IR_DIR / path).exists() else FIXTURES / path

    @staticmethod
    def _run(cmd: list[str]) -> None:
        if shutil.which(cmd[0]) is None:
            raise BuildError(f"{cmd[0]} is not installed")
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
