"""The ``rtdyld`` command: run, and the debugging views of a link (trace,
symbols, map, check)."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

from .errors import LinkError, UsageError

DESCRIPTION = """\
rtdyld links x86-64 relocatable objects into this process and runs or inspects them.

subcommands:
  run      link objects, archives, assembly and LLVM IR, call main(argc, argv), exit with its status
  trace    link and print every relocation applied, with the bytes and instructions it changed
  symbols  link and print the final symbol map (--undefined: what is missing, without linking)
  map      link and print the memory layout: segments, sections, GOT, stubs, padding
  check    link and verify the '# rtdyld-check:' lines of the assembly inputs
  cache    show (stats) or empty (clear) an object cache made by --cache

Inputs are relocatable objects (.o), static archives (.a), x86-64 assembly (.s,
assembled for --triple; foo.s is the object foo.o), LLVM IR (.ll) and bitcode (.bc).
Run 'rtdyld COMMAND --help' for a command's options.
"""

INSPECT_EPILOG = """\
addresses:
  Without --target-addr the batch is linked into this process (and not run).
  With it, the batch is laid out on paper from ADDR: working memory is private,
  nothing executes, initializers do not run, and every address is the same on
  every run.  References to targets more than ~2 GiB from the 1 GiB window
  starting at ADDR go through stubs (calls) or fail (data).
"""


def _wrap(text: str) -> str:
    import textwrap  # (only the inspecting commands' descriptions: ~1 ms of 'rtdyld run' otherwise)

    return textwrap.fill(text, 79)


def _help_width() -> int:
    """What argparse's help formatter takes for its width when given none:
    the terminal's columns (``shutil.get_terminal_size``'s rule) less 2.
    Worked out here because argparse imports shutil for it, and with shutil
    come zlib, bz2, lzma and fnmatch: 3 ms of a repeated ``rtdyld run``
    where nothing else imports them, since every option added makes a
    formatter."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return (columns if columns > 0 else 80) - 2


class _Parser(argparse.ArgumentParser):
    """Usage errors as one ``rtdyld: error:`` line and exit status 1."""

    def __init__(self, *args, formatter_class=argparse.HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=partial(formatter_class, width=_help_width()), **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"rtdyld: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(1)


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad address {text!r}: expected a number such as 0x10000") from None
    if value < 0 or value >= 1 << 64:
        raise argparse.ArgumentTypeError(f"address {text} is not a 64-bit address")
    return value


def _name_address(text: str) -> tuple[str, int]:
    name, eq, addr = text.rpartition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=ADDR, got {text!r}")
    return name, _address(addr)


def _section_address(text: str) -> tuple[str, str, int]:
    where, eq, addr = text.rpartition("=")
    file, comma, section = where.partition(",")
    if not eq or not comma or not file or not section:
        raise argparse.ArgumentTypeError(f"expected FILE,SECTION=ADDR, got {text!r}")
    return file, section, _address(addr)


def _add_link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="objects (.o), archives (.a), assembly (.s), LLVM IR (.ll) or bitcode (.bc)")
    p.add_argument("-l", dest="libraries", action="append", default=[], metavar="NAME",
                   help="link library NAME: libNAME.so (dlopen'ed), or libNAME.a when only the archive "
                   "exists (searched in -L dirs, then the system's)")
    p.add_argument("-L", dest="library_dirs", action="append", default=[], metavar="DIR",
                   help="add DIR to the library search path")
    p.add_argument("--static", action="store_true",
                   help="make every -l link the archive libNAME.a, never the shared library")
    p.add_argument("--triple", metavar="TRIPLE",
                   help="target triple for .s and IR inputs (default: the host's; "
                   "x86_64-apple-macosx10.15 makes Mach-O)")
    p.add_argument("--define-abs", dest="define_abs", action="append", default=[], type=_name_address,
                   metavar="NAME=ADDR", help="define NAME as the absolute address ADDR")
    p.add_argument("--cache", metavar="DIR",
                   help="keep objects compiled from LLVM IR in DIR and reuse them (compiles only on a miss)")
    p.add_argument("--debug", action="store_true", help="show a Python traceback on errors")


def _add_layout_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-addr", dest="target_addr", type=_address, metavar="ADDR",
                   help="lay the batch out from the page-aligned address ADDR without mapping it "
                   "(deterministic addresses, nothing runs)")
    p.add_argument("--map-section", dest="map_section", action="append", default=[], type=_section_address,
                   metavar="FILE,SECTION=ADDR",
                   help="give section SECTION of object FILE the target address ADDR (e.g. foo.o,.text=0x1000; "
                   "a Mach-O section is foo.o,__TEXT,__text=...)")


def _add_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text tables (default) or one JSON object per line")


def _add_inspect_parser(sub, name: str, help: str, description: str, formats: bool = True):
    """A subcommand that links the inputs (optionally laid out on paper) and prints a view of the link."""
    p = sub.add_parser(name, help=help, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=INSPECT_EPILOG, description=_wrap(description))
    _add_link_options(p)
    _add_layout_options(p)
    if formats:
        _add_format_option(p)
    return p


# One function per subcommand adds its parser and options, so that a command
# line builds only its own: all of them cost ~2 ms (argparse sets up each
# option and parser, and asks gettext for every message), a tenth of what
# 'rtdyld run' adds to numpy's import.


def _run_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    run = sub.add_parser(
        name,
        help=help,
        description="Link the inputs into this process, call the entry point as main(argc, argv) "
        "and exit with its return value. Arguments after -- are passed to the program "
        "(argv[0] is the first input's name). C stdio is flushed before exit.",
    )
    _add_link_options(run)
    run.add_argument("--entry", default="main", metavar="SYM", help="entry point (default: main)")
    run.add_argument("--perf-map", dest="perf_map", action="store_true",
                     help="append the linked functions to /tmp/perf-<pid>.map so 'perf report' names them")
    run.add_argument("--link-cache", dest="link_cache", metavar="DIR",
                     help="link from (and fill) the link cache in DIR: repeated links skip reading and "
                     "relocating what did not change, and a repeated run of an unchanged program starts in "
                     "about half the time (default: $RTDYLD_LINK_CACHE, else none)")
    run.add_argument("--stats", action="store_true",
                     help="print the seconds each link phase took to stderr, as NAME_s=SECONDS lines; the "
                     "last is link_s (first input read to symbols published)")
    return run


def _trace_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    trace = _add_inspect_parser(
        sub, name, help,
        "Link the inputs (without running them, unless --run) and print every relocation "
        "applied: object, section, offset, target address P, relocation type, symbol, S, A, the value "
        "written, the bytes before and after, and the instruction holding the fixup before and after. "
        "Then the GOT slots and stubs made, the externals with the resolver that supplied each, and "
        "the archive members loaded. Relaxed GOT loads are marked on their row.",
    )
    trace.add_argument("--noexec", action="store_true",
                       help="lay the batch out on paper (from --target-addr, default 0x10000), never mapped")
    trace.add_argument("--run", action="store_true",
                       help="after the trace, call the entry point as 'rtdyld run' does (arguments after --)")
    trace.add_argument("--entry", default="main", metavar="SYM", help="entry point for --run (default: main)")
    trace.add_argument("--symbol", metavar="NAME", help="only relocations against NAME (wildcards allowed)")
    trace.add_argument("--section", metavar="NAME", help="only relocations in sections called NAME")
    trace.add_argument("--object", metavar="NAME", help="only relocations in object NAME (foo.o, libz.a(deflate.o))")
    trace.add_argument("--type", metavar="TYPE", help="only relocations of TYPE (R_X86_64_PLT32, or just PLT32)")
    trace.add_argument("--no-disasm", dest="disasm", action="store_false",
                       help="do not disassemble the instructions around each fixup")
    return trace


def _symbols_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    symbols = _add_inspect_parser(
        sub, name, help,
        "Link the inputs and print every symbol the batch defines (address, size, type, "
        "binding, visibility, defining object and section) and every external it uses with where it "
        "came from (a library path, the process, a user definition, an earlier batch). With --undefined, "
        "do not link: list each name the inputs reference but do not define, where it would come from "
        "or MISSING, and who references it; missing names are not an error.",
    )
    symbols.add_argument("--undefined", action="store_true",
                         help="list the names the inputs need from elsewhere, without failing on missing ones")
    symbols.add_argument("--locals", action="store_true", help="include local symbols")
    return symbols


def _map_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return _add_inspect_parser(
        sub, name, help,
        "Link the inputs and print the memory layout like a linker map file: each segment "
        "with its protection and size, the sections placed in it with their objects, the stub area, the "
        "GOT, tentative definitions and padding; then sections pinned with --map-section.",
    )


def _check_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    check = _add_inspect_parser(
        sub, name, help,
        "Link the inputs and evaluate the '# rtdyld-check: EXPR = EXPR' and "
        "'# jitlink-check: ...' lines of the .s inputs (or of the --check files) in LLVM's "
        "RuntimeDyldChecker language: symbols, *{N}ADDR memory reads, section_addr(FILE, SECTION), "
        "got_addr(FILE, SYMBOL), stub_addr(FILE[/SECTION], SYMBOL), decode_operand(LABEL, N), "
        "next_pc(LABEL). Prints each failing check with both sides' values and a summary; exits 1 "
        "if any check fails or a checked file has none.",
        formats=False,
    )
    check.add_argument("--check", dest="check_files", action="append", default=[], metavar="FILE",
                       help="read checks from FILE instead of from the .s inputs (repeatable)")
    check.add_argument("--check-prefix", dest="check_prefixes", action="append", default=[], metavar="NAME",
                       help="look for 'NAME:' lines (repeatable; default: rtdyld-check and jitlink-check)")
    check.add_argument("-v", "--verbose", action="store_true", help="print passing checks too")
    return check


def _cache_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    cachep = sub.add_parser(
        name, help=help,
        description="'stats' prints the entries and bytes of the object cache in DIR (made by --cache); "
        "'clear' empties it, leaving files the cache did not write alone.",
    )
    cachep.add_argument("action", choices=("stats", "clear"))
    cachep.add_argument("directory", metavar="DIR")
    cachep.add_argument("--debug", action="store_true", help="show a Python traceback on errors")
    return cachep


SUBCOMMANDS = {  # name -> (one-line help, the function adding its parser)
    "run": ("link inputs and call main(argc, argv)", _run_parser),
    "trace": ("print every relocation applied", _trace_parser),
    "symbols": ("print the final symbol map", _symbols_parser),
    "map": ("print the memory layout", _map_parser),
    "check": ("verify the check lines of the inputs", _check_parser),
    "cache": ("show or empty an object cache", _cache_parser),
}


class _OneCommand:
    """In place of the subparsers action when the command line names its
    command first: that command's parser is made alone, as ``rtdyld NAME``
    (what the action would call it), and parses the rest of the line.  The
    top-level parser would only pass the line on, at the cost of a parser
    (argparse asks gettext for each of its messages)."""

    def add_parser(self, name: str, help: str, **kwargs) -> _Parser:
        parser = _Parser(prog=f"rtdyld {name}", **kwargs)
        parser.set_defaults(command=name)
        return parser


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command``, the parser of that
    subcommand alone, for the arguments after the command's name (the others
    matter only to ``rtdyld --help`` and to a command line that names none of
    them)."""
    if command is not None:
        text, add_parser = SUBCOMMANDS[command]
        return add_parser(_OneCommand(), command, text)
    parser = _Parser(prog="rtdyld", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help, add_parser) in SUBCOMMANDS.items():
        add_parser(sub, name, help)
    return parser


def split_program_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


# --- building the link ------------------------------------------------------------


def _memory(args, noexec: bool = False):
    """VirtualMemory for --target-addr/--noexec, else None (this process's memory)."""
    base = getattr(args, "target_addr", None)
    if base is None and not noexec:
        return None
    from memmgr import VirtualMemory

    try:
        return VirtualMemory() if base is None else VirtualMemory(base=base)
    except ValueError as e:
        raise UsageError(f"--target-addr {base:#x}: {e}") from None


def make_linker(args, memory=None, run_initializers: bool = False):
    """A Linker with the inputs, libraries and definitions of the command line added."""
    from .linker import Linker

    ln = Linker(memory=memory, run_initializers=run_initializers,
                perf_map=getattr(args, "perf_map", None) or None, link_cache=getattr(args, "link_cache", False))
    ln.library_dirs.extend(args.library_dirs)
    for name, address in args.define_abs:
        ln.define(name, address)
    for file, section, address in getattr(args, "map_section", []):
        ln.pinned[(file, section)] = address
    for lib in args.libraries:
        ln.link_library(lib, static=args.static)
    cache = None
    if getattr(args, "cache", None):
        from .cache import ObjectCache

        cache = ObjectCache(args.cache)
    for path in args.inputs:
        ln.add_file(path, triple=args.triple, cache=cache)
    return ln


def _check_pins(args, batch) -> None:
    """Every --map-section must have named a loaded section."""
    pins = getattr(args, "map_section", [])
    if not pins:
        return
    from .symmap import BatchSymbols

    view = BatchSymbols(batch)
    for file, section, _address in pins:
        try:
            oi = view.object_index(file)
        except KeyError:
            names = ", ".join(o.name for o in batch.objects)
            raise UsageError(
                f"--map-section {file},{section}: no object {file!r} in the link (objects: {names})"
            ) from None
        if batch.objects[oi].name != file:  # found by its file name only
            raise UsageError(f"--map-section {file},{section}: name the object as {batch.objects[oi].name!r}")
        try:
            view.placed_section(oi, section)
        except KeyError:
            names = ", ".join(s.name for s in batch.objects[oi].sections)
            raise UsageError(f"--map-section {file},{section}: {file} has no loaded section {section!r} "
                             f"(sections: {names})") from None


def _link(args, memory=None, run_initializers: bool = False):
    ln = make_linker(args, memory, run_initializers)
    try:
        handle = ln.finalize()
        _check_pins(args, handle.batch)
    except BaseException:
        ln.close()
        raise
    return ln, handle


def _call_entry(ln, args, program_args: list[str]) -> int:
    from . import host

    main = ln.function(args.entry, "int(int, char **)")
    argv = [args.inputs[0], *program_args]
    keep = [host.ffi.new("char[]", a.encode()) for a in argv]
    c_argv = host.ffi.new("char *[]", keep + [host.ffi.NULL])
    sys.stdout.flush()
    status = main(len(argv), c_argv)
    # Returning from main runs the program's destructors, as exit() would:
    # now, not at interpreter exit, where they would be lost had a garbage
    # collection taken the session (by then unreferenced) first.
    ln.close()
    host.flush_stdio()
    return status & 0xFF


def _no_program_args(command: str, program_args: list[str]) -> None:
    if program_args:
        raise UsageError(f"{command}: arguments after -- are only for 'run' and 'trace --run'")


# --- commands -------------------------------------------------------------------------


def cmd_run(args, program_args: list[str]) -> int:
    if args.stats:
        from .phases import print_stats, timed_phases

        with timed_phases() as log:
            ln = make_linker(args, run_initializers=True)
            ln.finalize()
        print_stats(log)
    else:
        ln = make_linker(args, run_initializers=True)
        ln.finalize()
    return _call_entry(ln, args, program_args)


def cmd_trace(args, program_args: list[str]) -> int:
    from .trace import build_trace, format_json, format_table

    if args.run and (args.noexec or args.target_addr is not None or args.map_section):
        raise UsageError("trace: --run cannot be combined with --noexec, --target-addr or --map-section")
    if not args.run:
        _no_program_args("trace", program_args)
    ln, handle = _link(args, _memory(args, args.noexec), run_initializers=args.run)
    try:
        trace = build_trace(handle.batch, disassemble=args.disasm).filter(
            symbol=args.symbol, section=args.section, object=args.object, type=args.type
        )
        sys.stdout.write(format_json(trace) if args.format == "json" else format_table(trace))
        if args.run:
            return _call_entry(ln, args, program_args)
    finally:
        if not args.run:
            ln.close()
    return 0


def _print_pulls(batch) -> None:
    """Which archive members were loaded, and for which undefined symbol of whom."""
    pulls = [(o.name, batch.pulls[id(o)]) for o in batch.objects if id(o) in batch.pulls]
    if not pulls:
        return
    print("\narchive members loaded:")
    _print_table(
        ("MEMBER", "FOR SYMBOL", "REFERENCED BY"),
        [(name, p.symbol or "-", p.referrer) for name, p in pulls],
    )


def cmd_symbols(args, program_args: list[str]) -> int:
    from .symmap import symbol_map, undefined_references

    _no_program_args("symbols", program_args)
    import json
    from dataclasses import asdict

    if args.undefined:
        ln = make_linker(args, _memory(args), run_initializers=False)
        found = undefined_references(ln.pending_objects(), ln.resolver)
        ln.abort()
        if args.format == "json":
            for u in found:
                print(json.dumps({"name": u.name, "status": u.status, "missing": u.missing,
                                  "address": u.found.address if u.found else None, "referrers": u.referrers}))
            return 0
        missing = sum(u.missing for u in found)
        rows = [(u.name, f"{u.found.address:#x}" if u.found else "-", u.status, ", ".join(u.referrers))
                for u in found]
        _print_table(("NAME", "ADDRESS", "FROM", "REFERENCED BY"), rows)
        print(f"{len(found)} undefined name{'s' if len(found) != 1 else ''}, {missing} missing")
        return 0
    ln, handle = _link(args, _memory(args))
    try:
        rows = symbol_map(handle.batch, locals=args.locals)
        if args.format == "json":
            for r in rows:
                print(json.dumps(asdict(r)))
            return 0
        _print_table(
            ("ADDRESS", "SIZE", "TYPE", "BIND", "VIS", "NAME", "DEFINED IN"),
            [(f"{r.address:#018x}", f"{r.size:#x}", r.type or "-", r.bind, r.vis or "-", r.name,
              r.origin if r.external else f"{r.origin}({r.section})") for r in rows],
        )
        _print_pulls(handle.batch)
    finally:
        ln.close()
    return 0


def cmd_map(args, program_args: list[str]) -> int:
    import json

    from .mapfile import format_map, memory_map

    _no_program_args("map", program_args)
    ln, handle = _link(args, _memory(args))
    try:
        m = memory_map(handle.batch)
        sys.stdout.write(json.dumps(m.to_json()) + "\n" if args.format == "json" else format_map(m))
    finally:
        ln.close()
    return 0


def cmd_check(args, program_args: list[str]) -> int:
    from .check import DEFAULT_PREFIXES
    from .checkenv import run_checks

    _no_program_args("check", program_args)
    files = args.check_files or [p for p in args.inputs if os.path.splitext(p)[1] in (".s", ".S")]
    if not files:
        raise UsageError("check: no .s input holds checks; name the file with --check FILE")
    prefixes = args.check_prefixes or DEFAULT_PREFIXES
    ln, handle = _link(args, _memory(args))
    try:
        return run_checks(ln, handle.batch, files, prefixes, verbose=args.verbose)
    finally:
        ln.close()


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from .trace import table_lines

    print("\n".join(table_lines(header, rows)))


def cmd_cache(args, program_args: list[str]) -> int:
    from .cache import cache_clear_main, cache_stats_main

    _no_program_args("cache", program_args)
    print(cache_stats_main(args.directory) if args.action == "stats" else cache_clear_main(args.directory))
    return 0


COMMANDS = {
    "run": cmd_run,
    "trace": cmd_trace,
    "symbols": cmd_symbols,
    "map": cmd_map,
    "check": cmd_check,
    "cache": cmd_cache,
}


def _one_line(message: str) -> str:
    """A multi-line message as one line: its lines joined by "; " (by a space after a colon)."""
    out = ""
    for part in (p.strip() for p in message.splitlines()):
        if part:
            out += (" " if out.endswith(":") else "; " if out else "") + part
    return out


BLAS_THREADS = "OPENBLAS_NUM_THREADS"


def _hold_blas_to_one_thread() -> None:
    """Have numpy, when something first imports it, load OpenBLAS held to the
    calling thread.

    The command never calls BLAS, but OpenBLAS starts a thread per core when
    numpy loads it, which spin at once: on two cores that is ~100 ms of CPU
    and ~10 ms of wall time of every ``rtdyld run`` that links cold.  (A warm
    run from the link cache does not import numpy at all.)  The variable is
    read only when the library loads, so it is set for numpy's import alone
    and the program run sees the environment it was given (a value the user
    set is left as it is)."""
    if "numpy" in sys.modules or BLAS_THREADS in os.environ:
        return
    sys.meta_path.insert(0, _OneBlasThreadWhileNumpyLoads())


def _cold_link_code_up_front(args) -> None:
    """Without a link cache a command links cold: the batch linker, the ELF
    reader and numpy are imported now, as start-up, not inside the link that
    ``--stats`` times.  With one, a batch restored from it needs none of
    them, and a miss imports them within the link."""
    from .link_cache_setting import ENV

    setting = getattr(args, "link_cache", False)
    if args.command == "cache" or setting or (setting is None and os.environ.get(ENV)):
        return
    from . import batch, ifunc  # noqa: F401
    from .objfile import elf  # noqa: F401


class _OneBlasThreadWhileNumpyLoads:
    """A one-shot import hook: numpy's import runs with the variable set."""

    def find_spec(self, name, path=None, target=None):
        if name != "numpy":
            return None
        sys.meta_path.remove(self)
        from importlib.util import find_spec

        spec = find_spec(name)
        if spec is None or spec.loader is None or BLAS_THREADS in os.environ:
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            os.environ[BLAS_THREADS] = "1"
            try:
                load(module)
            finally:
                os.environ.pop(BLAS_THREADS, None)

        # On this loader instance only (numpy's own), so the module keeps its loader.
        spec.loader.exec_module = exec_module
        return spec


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, program_args = split_program_args(argv)
    named = bool(own) and own[0] in SUBCOMMANDS
    parser = build_parser(own[0] if named else None)
    try:
        args = parser.parse_args(own[1:] if named else own)
    except SystemExit as e:
        return int(e.code or 0)
    if not args.command:
        parser.print_help()
        return 1
    _hold_blas_to_one_thread()
    _cold_link_code_up_front(args)
    try:
        return COMMANDS[args.command](args, program_args)
    except Exception as e:
        if args.debug:
            raise
        message = _one_line(str(e))
        if not isinstance(e, (LinkError, OSError)):
            message = f"internal error: {type(e).__name__}: {message} (rerun with --debug for the traceback)"
        print(f"rtdyld: error: {message}", file=sys.stderr)
        return 1


def console_main() -> None:
    """The ``rtdyld`` command (and ``python -m rtdyld``): :func:`main`, then the
    process ends as a C program's does once its work is done."""
    exit_now(main())


def exit_now(status: int) -> None:
    """End the process with ``status`` the way ``exit()`` ends a C program:
    the exit handlers run (the linker's runs the destructors of batches still
    loaded and flushes the C streams) and the Python streams are flushed, but
    the interpreter's modules are not torn down one by one, which costs a new
    process more (~13 ms with the linker's modules loaded) than linking a
    small program.  If a stream cannot be flushed, or a profiler or tracer
    is attached (``python -m cProfile -m rtdyld`` reports after the command
    returns), the interpreter exits normally instead."""
    import atexit

    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    atexit._run_exitfuncs()  # what interpreter shutdown runs first (CPython's, as rtdyld needs)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status & 0xFF)  # as the kernel keeps of exit()'s status


if __name__ == "__main__":
    console_main()
