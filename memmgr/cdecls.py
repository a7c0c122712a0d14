"""The C declarations memmgr calls through cffi: written here, and only here.

They are not handed to ``cffi.FFI().cdef`` at import: that parses them with
pycparser, whose import alone costs more than the rest of memmgr.  They are
compiled instead, in cffi's out-of-line ABI mode (no C compiler involved),
into ``memmgr/_libc_ffi.py``, a pure-Python module of pre-parsed types that
needs only ``_cffi_backend`` at run time.  After changing them, run
``python -m rtdyld.ffigen``; ``tests/test_ffigen.py`` fails while the
generated module and these declarations differ.
"""

LIBC = """
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
    int mprotect(void *addr, size_t len, int prot);
    int munmap(void *addr, size_t length);
    int madvise(void *addr, size_t length, int advice);
"""
