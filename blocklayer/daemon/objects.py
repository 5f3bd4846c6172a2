"""QOM objects: the types the daemon accepts are kept as data (their properties are
validated by the schema's ObjectOptions before they get here)."""
from __future__ import annotations

from typing import Any

from blocklayer.qmp.dispatch import Context
from blocklayer.qmp.protocol import CommandError

#: accepted object types; others in the schema are refused
SUPPORTED_TYPES = ("secret", "throttle-group", "iothread", "tls-creds-x509", "tls-creds-psk",
                   "tls-creds-anon", "authz-simple", "authz-list")


def add_object(daemon: Any, args: dict[str, Any]) -> None:
    from .state import QomObject
    qom_type, obj_id = args["qom-type"], args["id"]
    if qom_type not in SUPPORTED_TYPES:
        raise CommandError(f"Object type '{qom_type}' is not supported by "
                           "blocklayer-storage-daemon")
    if obj_id in daemon.objects:
        raise CommandError(f"attempt to add duplicate property '{obj_id}' to object "
                           "(type 'container')")
    if qom_type == "secret" and "data" not in args and "file" not in args:
        raise CommandError("Either 'data' or 'file' must be provided")
    props = {k: v for k, v in args.items() if k not in ("qom-type", "id")}
    daemon.objects[obj_id] = QomObject(obj_id, qom_type, props)


async def object_add(ctx: Context, args: dict[str, Any]) -> None:
    add_object(ctx.app, args)


async def object_del(ctx: Context, args: dict[str, Any]) -> None:
    if args["id"] not in ctx.app.objects:
        raise CommandError(f"object '{args['id']}' not found")
    del ctx.app.objects[args["id"]]


async def qom_list_types(ctx: Context, args: dict[str, Any]) -> Any:
    types = ctx.app.schema.qom_types
    parents = {t["name"]: t.get("parent") for t in types}

    def implements(name: str, base: str) -> bool:
        while name is not None:
            if name == base:
                return True
            name = parents.get(name)  # type: ignore[assignment]
        return False
    out = []
    for t in types:
        if t.get("abstract") and not args.get("abstract", False):
            continue
        if "implements" in args and not implements(t["name"], args["implements"]):
            continue
        out.append(t)
    return out


HANDLERS = {
    "object-add": object_add,
    "object-del": object_del,
    "qom-list-types": qom_list_types,
}
