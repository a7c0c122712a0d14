"""The ``rtdyld`` command."""

from __future__ import annotations

import argparse
import os
import sys

from .errors import LinkError

DESCRIPTION = """\
rtdyld links x86-64 relocatable objects into this process and runs or inspects them.

subcommands:
  run      link objects, archives and LLVM IR, call main(argc, argv), exit with its status
"""


def _add_link_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="object files (.o), LLVM IR (.ll) or bitcode (.bc)")
    p.add_argument("-l", dest="libraries", action="append", default=[], metavar="NAME",
                   help="load shared library libNAME.so (searched in -L dirs, then the system's)")
    p.add_argument("-L", dest="library_dirs", action="append", default=[], metavar="DIR",
                   help="add DIR to the library search path")
    p.add_argument("--debug", action="store_true", help="show a Python traceback on errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtdyld", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="link inputs and call main(argc, argv)",
        description="Link the inputs into this process, call the entry point as main(argc, argv) "
        "and exit with its return value. Arguments after -- are passed to the program "
        "(argv[0] is the first input's name). C stdio is flushed before exit.",
    )
    _add_link_options(run)
    run.add_argument("--entry", default="main", metavar="SYM", help="entry point (default: main)")
    return parser


def split_program_args(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def add_inputs(ln, inputs: list[str]) -> None:
    for path in inputs:
        ext = os.path.splitext(path)[1]
        if ext in (".ll", ".bc"):
            with open(path, "rb") as f:
                data = f.read()
            ln.add_module(data if ext == ".bc" else data.decode(), name=path)
        else:
            ln.add_object(path)


def cmd_run(args, program_args: list[str]) -> int:
    from . import host
    from .linker import Linker

    ln = Linker()
    ln.library_dirs.extend(args.library_dirs)
    for lib in args.libraries:
        ln.load_library(lib)
    add_inputs(ln, args.inputs)
    ln.finalize()
    main = ln.function(args.entry, "int(int, char **)")
    argv = [args.inputs[0], *program_args]
    keep = [host.ffi.new("char[]", a.encode()) for a in argv]
    c_argv = host.ffi.new("char *[]", keep + [host.ffi.NULL])
    sys.stdout.flush()
    status = main(len(argv), c_argv)
    host.flush_stdio()
    return status & 0xFF


COMMANDS = {"run": cmd_run}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, program_args = split_program_args(argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if not args.command:
        parser.print_help()
        return 1
    try:
        return COMMANDS[args.command](args, program_args)
    except (LinkError, OSError) as e:
        if getattr(args, "debug", False):
            raise
        msg = str(e).replace("\n", "\n  ") if "\n" in str(e) else str(e)
        print(f"rtdyld: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
