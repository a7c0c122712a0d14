"""The C declarations memmgr calls through cffi: written here, and only here.

They are not handed to ``cffi.FFI().cdef`` at import: that parses them with
pycparser, whose import alone costs more than the rest of memmgr.  They are
compiled instead, in cffi's out-of-line ABI mode (no C compiler involved),
into ``memmgr/_libc_ffi.py``, a pure-Python module of pre-parsed types that
needs only ``_cffi_backend`` at run time.  After changing them, run
``python -m rtdyld.ffigen``; ``tests/test_ffigen.py`` fails while the
generated module and these declarations differ.

Addresses are declared as ``uintptr_t``, which the x86-64 calling convention
passes and returns exactly as a pointer: calls then take and return plain
integers and make no pointer object each time (with cold caches an
``ffi.cast`` costs more than a warm ``mprotect`` call).
"""

LIBC = """
    uintptr_t mmap(uintptr_t addr, size_t length, int prot, int flags, int fd, long offset);
    int mprotect(uintptr_t addr, size_t len, int prot);
    int munmap(uintptr_t addr, size_t length);
    int madvise(uintptr_t addr, size_t length, int advice);
"""
