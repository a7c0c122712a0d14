"""The C declarations rtdyld calls through cffi: written here, and only here.

They are not handed to ``cffi.FFI().cdef`` at import: that parses them with
pycparser, whose import alone costs a fifth of a plain ``rtdyld run``.  They
are compiled instead, in cffi's out-of-line ABI mode (no C compiler
involved), into ``rtdyld/_libc_ffi.py``, a pure-Python module of pre-parsed
types that needs only ``_cffi_backend`` at run time; it also parses the
signatures given to ``Linker.function`` without pycparser.  After changing
them, run ``python -m rtdyld.ffigen``; ``tests/test_ffigen.py`` fails while
the generated module and these declarations differ.
"""

LIBC = """
    /* host: the process and its libraries as symbol sources */
    typedef struct { const char *dli_fname; void *dli_fbase;
                     const char *dli_sname; void *dli_saddr; } Dl_info;
    void *dlopen(const char *filename, int flags);
    void *dlsym(void *handle, const char *symbol);
    char *dlerror(void);
    int dladdr(const void *addr, Dl_info *info);
    int fflush(void *stream);

    /* tls_module: a batch's TLS block as a module of the loader */
    int dlclose(void *handle);
    int dlinfo(void *handle, int request, void *info);

    /* loaded_objects: glibc 2.35's _dl_find_object (looked up on first use; may be missing) */
    struct link_map { uintptr_t l_addr; char *l_name; void *l_ld; struct link_map *l_next, *l_prev; };
    struct dl_find_object { unsigned long long dlfo_flags; void *dlfo_map_start; void *dlfo_map_end;
                            struct link_map *dlfo_link_map; void *dlfo_eh_frame;
                            unsigned long long reserved[16]; };
    int _dl_find_object(void *pc, struct dl_find_object *result);

    /* gdb_jit: GDB's JIT interface (its descriptor lives in libllvmlite.so) */
    struct jit_code_entry {
        struct jit_code_entry *next_entry;
        struct jit_code_entry *prev_entry;
        const char *symfile_addr;
        uint64_t symfile_size;
    };
    struct jit_descriptor {
        uint32_t version;
        uint32_t action_flag;
        struct jit_code_entry *relevant_entry;
        struct jit_code_entry *first_entry;
    };
    struct link_map_head { uintptr_t l_addr; const char *l_name; };
"""
