"""qemu-storage-daemon's command line: getopt_long as QSD calls it (options and their
arguments in the order given, unique prefixes of long options, QEMU's messages)."""
from __future__ import annotations

from dataclasses import dataclass

#: long option -> takes an argument
LONG = {"help": False, "trace": True, "version": False, "blockdev": True, "chardev": True,
        "daemonize": False, "export": True, "monitor": True, "nbd-server": True,
        "object": True, "pidfile": True, "metrics": True}
#: blocklayer's own options: only spelled out in full (QSD's prefixes keep their meaning)
EXTENSIONS = ("metrics",)
SHORT = {"h": "help", "T": "trace", "V": "version"}


class UsageError(Exception):
    """Bad command line: the text follows ``prog: `` (exit 1)."""


@dataclass
class Option:
    name: str            # long name
    arg: str | None
    spelled: str         # as QEMU names it in messages: "--blockdev"


def _long(word: str, args: list[str], i: int) -> tuple[Option, int]:
    body, eq, value = word[2:].partition("=")
    matches = [n for n in LONG if n.startswith(body) and n not in EXTENSIONS]
    if body in LONG:
        matches = [body]
    if not matches:
        raise UsageError(f"unrecognized option '{word}'")
    if len(matches) > 1:
        raise UsageError(f"option '{word}' is ambiguous; possibilities: "
                         + " ".join(f"'--{m}'" for m in matches))
    name = matches[0]
    if not LONG[name]:
        if eq:
            raise UsageError(f"option '--{name}' doesn't allow an argument")
        return Option(name, None, f"--{name}"), i + 1
    if eq:
        return Option(name, value, f"--{name}"), i + 1
    if i + 1 >= len(args):
        raise UsageError(f"option '--{name}' requires an argument")
    return Option(name, args[i + 1], f"--{name}"), i + 2


def _short(word: str, args: list[str], i: int) -> tuple[list[Option], int]:
    out: list[Option] = []
    j = 1
    while j < len(word):
        ch = word[j]
        if ch not in SHORT:
            raise UsageError(f"invalid option -- '{ch}'")
        name = SHORT[ch]
        if LONG[name]:
            rest = word[j + 1:]
            if rest:
                return out + [Option(name, rest, f"-{ch}")], i + 1
            if i + 1 >= len(args):
                raise UsageError(f"option requires an argument -- '{ch}'")
            return out + [Option(name, args[i + 1], f"-{ch}")], i + 2
        out.append(Option(name, None, f"-{ch}"))
        j += 1
    return out, i + 1


def parse(args: list[str]) -> list[Option]:
    out: list[Option] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            for rest in args[i + 1:]:
                raise UsageError(f"{rest}: Unexpected argument")
            break
        if word.startswith("--"):
            opt, i = _long(word, args, i)
            out.append(opt)
        elif word.startswith("-") and word != "-":
            opts, i = _short(word, args, i)
            out.extend(opts)
        else:
            raise UsageError(f"{word}: Unexpected argument")
    return out


HELP = """\
Usage: {prog} [options]
QEMU storage daemon

  -h, --help             display this help and exit
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                         specify tracing options
  -V, --version          output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,driver specific parameters...]
                         configure a block backend

  --chardev <options>    configure a character device backend
                         (see the qemu(1) man page for possible options)

  --daemonize            daemonize the process, and have the parent exit
                         once startup is complete

  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
           [,writable=on|off][,bitmap=<name>]
                         export the specified block node over NBD
                         (requires --nbd-server)

  --metrics <host>:<port>
                         serve the daemon's counters (nodes, exports, jobs) in
                         the Prometheus text format over HTTP (blocklayer only)

  --monitor [chardev=]name[,mode=control][,pretty[=on|off]]
                         configure a QMP monitor

  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
  --nbd-server addr.type=unix,addr.path=<path>
               [,tls-creds=<id>][,tls-authz=<id>][,max-connections=<n>]
                         start an NBD server for exporting block nodes

  --object help          list object types that can be added
  --object <type>,help   list properties for the given object type
  --object <type>[,<property>=<value>...]
                         create a new object of type <type>, setting
                         properties in the order they are specified. Note
                         that the 'id' property must be set.
                         See the qemu(1) man page for documentation of the
                         objects that can be added.

  --pidfile <path>       write process ID to a file after startup

blocklayer rebuilds QEMU's block layer in Python; FUSE, vhost-user-blk and vduse-blk
exports are not available.
"""
