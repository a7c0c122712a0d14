"""A batch's TLS block, owned by the process's dynamic loader.

Why glibc owns it: a thread-local variable needs one copy per thread,
initialised from the batch's .tdata/.tbss image — in threads created later,
and also in every thread that already exists when the batch is linked.
Only the loader can reach into existing threads (it keeps the list of
thread control blocks and their dtv), so rtdyld does not run a TLS runtime
of its own: it writes a code-less shared object whose PT_TLS segment is the
batch's image (:mod:`rtdyld.elf_dso`), hands it to ``dlopen`` through a
memfd, and lets glibc do what it does for any library with ``__thread``
variables.  The process's own ``__tls_get_addr`` then serves the batch's
general- and local-dynamic sequences unchanged.

The loader reports back through two dynamic relocations of that object
against its own (null, local) symbol: R_X86_64_DTPMOD64 yields the module
id, R_X86_64_TPOFF64 the block's offset from the thread pointer.  The
second also makes glibc place the block in the static TLS area, which the
initial- and local-exec models need (a fixed offset from %fs for every
thread); it is only asked for when the batch uses them, because the static
surplus is small (the tunable glibc.rtld.optional_static_tls).
"""

from __future__ import annotations

import os
import secrets
import struct

from . import host
from ._libc_ffi import ffi as _ffi
from .elf_dso import DF_STATIC_TLS, Relocation, TlsImage, build_shared_object
from .errors import LinkError

R_X86_64_DTPMOD64, R_X86_64_TPOFF64 = 16, 18
RTLD_NOW, RTLD_LOCAL = 2, 0
RTLD_DI_LINKMAP = 2

_libc = _ffi.dlopen(None)
# Looked up once, here: cffi resolves a function on first use with dlsym,
# which would clear the error dlopen just left for dlerror.
_dlopen, _dlclose, _dlerror, _dlinfo = _libc.dlopen, _libc.dlclose, _libc.dlerror, _libc.dlinfo


class TlsModuleError(LinkError):
    """The process's loader would not take the batch's TLS block."""


class TlsModule:
    """One batch's TLS block as a loaded module: ``modid`` and, for the static
    models, ``tp_offset`` (where the block starts, relative to %fs:0)."""

    def __init__(self, init: bytes, memsz: int, align: int, static: bool, name: str):
        # A nonce in the data area proves the loader mapped this object and
        # not an earlier one it still holds under the same /proc path.
        nonce = secrets.token_bytes(16)
        relocs = [Relocation(16, R_X86_64_DTPMOD64)]
        if static:
            relocs.append(Relocation(24, R_X86_64_TPOFF64))
        dso = build_shared_object(
            data=nonce + bytes(16),
            relocations=relocs,
            tls=TlsImage(bytes(init), memsz, align),
            soname="rtdyld-tls",
            flags=DF_STATIC_TLS if static else 0,
        )
        self.size, self.align, self.static, self.name = memsz, align, static, name
        self._fd = os.memfd_create("rtdyld-tls", os.MFD_CLOEXEC)
        self._handle = None
        try:
            os.write(self._fd, dso.image)
            handle = _dlopen(f"/proc/self/fd/{self._fd}".encode(), RTLD_NOW | RTLD_LOCAL)
            if handle == _ffi.NULL:
                err = _dlerror()
                why = _ffi.string(err).decode(errors="replace") if err != _ffi.NULL else "dlopen failed"
                raise TlsModuleError(self._explain(why))
            self._handle = handle
            base = self._load_address()
            data = bytes(_ffi.buffer(_ffi.cast("char *", base + dso.data_vaddr), 32))
            if data[:16] != nonce:
                raise TlsModuleError(f"the loader returned a stale TLS module for {name}")
            self.modid, tpoff = struct.unpack("<Qq", data[16:32])
            self.tp_offset = tpoff if static else None
        except BaseException:
            self.close()
            raise

    def _load_address(self) -> int:
        lm = _ffi.new("void **")
        if _dlinfo(self._handle, RTLD_DI_LINKMAP, lm) != 0:
            raise TlsModuleError("dlinfo(RTLD_DI_LINKMAP) failed for the TLS module")
        return struct.unpack("<Q", bytes(_ffi.buffer(_ffi.cast("char *", lm[0]), 8)))[0]

    def _explain(self, why: str) -> str:
        msg = f"cannot load the thread-local storage of {self.name} ({self.size} bytes, align {self.align}): {why}"
        if self.static and "static TLS" in why:
            msg += (
                "; initial-exec and local-exec TLS must fit in the process's static TLS surplus: "
                "rebuild with -fPIC -ftls-model=global-dynamic, or start the process with "
                "GLIBC_TUNABLES=glibc.rtld.optional_static_tls=<bytes> large enough"
            )
        return msg

    def close(self) -> None:
        """dlclose the module (a second call does nothing)."""
        if self._handle is not None:
            _dlclose(self._handle)
            self._handle = None
            host.forget_descriptions()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
