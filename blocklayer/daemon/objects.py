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
    if qom_type == "throttle-group":
        add_throttle_group(obj_id, props)
    daemon.objects[obj_id] = QomObject(obj_id, qom_type, props)


def _throttle_config(props: dict[str, Any], base: Any = None) -> Any:
    from blocklayer.core.throttle import ConfigError, config_from_limits
    limits = {k[2:]: v for k, v in props.items() if k.startswith("x-")}
    limits.update(props.get("limits", {}))
    try:
        return config_from_limits(limits, base)
    except ConfigError as exc:
        raise CommandError(exc.message) from exc


def add_throttle_group(obj_id: str, props: dict[str, Any]) -> None:
    from blocklayer.filters.throttle import GROUPS, ThrottleGroup
    GROUPS[obj_id] = ThrottleGroup(obj_id, _throttle_config(props))


def _qom_object(daemon: Any, path: str) -> Any:
    obj_id = path.removeprefix("/objects/")
    obj = daemon.objects.get(obj_id)
    if obj is None or "/" in obj_id:
        raise CommandError(f"Device '{path}' not found", "DeviceNotFound")
    return obj


#: the properties of a throttle-group as qom-list prints them
THROTTLE_PROPS = [("type", "string"), ("limits", "ThrottleLimits")]


def _legacy_names() -> list[str]:
    from blocklayer.core.throttle import BUCKETS
    return [f"x-{b}{s}" for b in BUCKETS for s in ("", "-max", "-max-length")] + \
        ["x-iops-size"]


async def qom_list(ctx: Context, args: dict[str, Any]) -> Any:
    obj = _qom_object(ctx.app, args["path"])
    props = [{"name": "type", "type": "string"}]
    if obj.qom_type == "throttle-group":
        props.append({"name": "limits", "type": "ThrottleLimits"})
        props += [{"name": n, "type": "int"} for n in _legacy_names()]
    return props


def _group_limits(obj: Any) -> dict[str, int]:
    from blocklayer.core.throttle import limits_of
    from blocklayer.filters.throttle import GROUPS
    return limits_of(GROUPS[obj.id].state.cfg)


async def qom_get(ctx: Context, args: dict[str, Any]) -> Any:
    obj = _qom_object(ctx.app, args["path"])
    prop = args["property"]
    if prop == "type":
        return obj.qom_type
    if obj.qom_type == "throttle-group":
        if prop == "limits":
            return _group_limits(obj)
        if prop in _legacy_names():
            return _group_limits(obj)[prop[2:]]
    raise CommandError(f"Property '{obj.qom_type}.{prop}' not found")


async def qom_set(ctx: Context, args: dict[str, Any]) -> None:
    from blocklayer.filters.throttle import GROUPS
    obj = _qom_object(ctx.app, args["path"])
    prop, value = args["property"], args["value"]
    if obj.qom_type == "throttle-group":
        if prop == "limits":
            if not isinstance(value, dict):
                raise CommandError("Invalid parameter type for 'limits', expected: object")
            group = GROUPS[obj.id]
            group.configure(_throttle_config({"limits": value}, group.state.cfg))
            return
        if prop in _legacy_names():
            raise CommandError("Property cannot be set after initialization")
    if prop == "type":
        raise CommandError(f"Property '{obj.qom_type}.{prop}' is not writable")
    raise CommandError(f"Property '{obj.qom_type}.{prop}' not found")


async def object_add(ctx: Context, args: dict[str, Any]) -> None:
    add_object(ctx.app, args)


async def object_del(ctx: Context, args: dict[str, Any]) -> None:
    obj = ctx.app.objects.get(args["id"])
    if obj is None:
        raise CommandError(f"object '{args['id']}' not found")
    if obj.qom_type == "throttle-group":
        from blocklayer.filters.throttle import GROUPS
        if GROUPS[obj.id].members:
            raise CommandError(f"object '{obj.id}' is in use, can not be deleted")
        del GROUPS[obj.id]
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
    "qom-list": qom_list,
    "qom-get": qom_get,
    "qom-set": qom_set,
}
