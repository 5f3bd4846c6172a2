"""blocklayer-img: the command dispatcher (qemu-img's command line).

Each subcommand lives in its own module, imported only when asked for, with
``main(argv) -> int``.  Errors become one ``blocklayer-img: ...`` line on stderr.
"""
from __future__ import annotations

import importlib
import sys

from .args import DEFAULT_NAME, UsageError, prog

COMMANDS = {
    "amend": "amend", "bench": "bench", "bitmap": "bitmap", "check": "check",
    "commit": "commit", "compare": "compare", "convert": "convert", "create": "create",
    "dd": "dd", "info": "info", "map": "map", "measure": "measure", "snapshot": "snapshot",
    "rebase": "rebase", "resize": "resize",
}


def _fail(message: str, code: int = 1, hint: bool = False) -> int:
    sys.stdout.flush()
    sys.stderr.write(f"{prog()}: {message}\n")
    if hint:
        sys.stderr.write(f"Try '{prog()} --help' for more information\n")
    sys.stderr.flush()
    return code


def run(argv: list[str]) -> int:
    from blocklayer.core import safety
    from blocklayer.core.errors import BlockError
    argv = safety.pop_option(argv)
    while argv and argv[0] in ("-T", "--trace") or (argv and argv[0].startswith("--trace=")):
        argv = argv[2:] if argv[0] in ("-T", "--trace") else argv[1:]
    if not argv:
        return _fail("Not enough arguments", hint=True)
    cmd = argv[0]
    if cmd in ("-h", "--help"):
        from .help import print_help
        print_help()
        return 0
    if cmd in ("-V", "--version"):
        from .help import version_text
        sys.stdout.write(version_text())
        return 0
    if cmd.startswith("-"):
        return _fail(f"unrecognized option '{cmd}'", hint=True)
    module_name = COMMANDS.get(cmd)
    if module_name is None:
        return _fail(f"Command not found: {cmd}", hint=True)
    module = importlib.import_module(f"{__package__}.{module_name}")
    from blocklayer.core.deep import TOO_DEEP, allow_deep_chains
    allow_deep_chains()
    try:
        return int(module.main(argv[1:]) or 0)
    except RecursionError:
        return _fail(TOO_DEEP)
    except UsageError as exc:
        return _fail(str(exc), hint=True)
    except BlockError as exc:
        return _fail(exc.message, getattr(exc, "code", 1))
    except OSError as exc:
        return _fail(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> None:
    from blocklayer.tools.common import set_program_name
    set_program_name(sys.argv[0] if sys.argv else None, DEFAULT_NAME)
    code = run(list(sys.argv[1:] if argv is None else argv))
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    raise SystemExit(code)


if __name__ == "__main__":
    main()
