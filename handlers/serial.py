"""Tiny, dependency-free (de)serialisation of the frozen dataclasses in handlers/.

Used by actions (for the outbox), consent records and referrals (for storage).
The JSON shape is stable and documented here so the storage and transport
engineers can rely on it:

* dataclass      -> dict of its fields (tagged unions add a ``"type"`` key, see below)
* datetime       -> ISO 8601 string with offset (always UTC in this project)
* date           -> ``YYYY-MM-DD``
* timedelta      -> float seconds
* Enum           -> its ``value``
* tuple/frozenset/list -> list (frozensets sorted, so output is deterministic)
* bytes          -> not supported on purpose (image bytes never go into JSON)

``to_jsonable(obj)`` and ``from_jsonable(tp, data)`` are the two entry points.
Union types of dataclasses (``Place``) are handled by the ``"type"`` tag, which is
the class name.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import date, datetime, timedelta
from typing import Any, Union, get_args, get_origin, get_type_hints

__all__ = ["to_jsonable", "from_jsonable"]

_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS_CACHE.get(cls)
    if hints is None:
        hints = get_type_hints(cls)
        _HINTS_CACHE[cls] = hints
    return hints


def to_jsonable(obj: Any, *, tag: bool = False) -> Any:
    """Convert *obj* to plain JSON types. ``tag=True`` adds ``"type": ClassName`` to dataclasses."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, enum.Enum):
            return obj.value
        return obj
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        raise TypeError("bytes are never serialised (image bytes live in the vault)")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if tag:
            out["type"] = type(obj).__name__
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            if not f.init:
                continue
            value = getattr(obj, f.name)
            out[f.name] = to_jsonable(value, tag=_is_union_of_dataclasses(hints.get(f.name)))
        return out
    if isinstance(obj, frozenset | set):
        items = [to_jsonable(v) for v in obj]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, tag=tag) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) != len(get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # type: ignore[return-value]
    return tp, False


def _is_union_of_dataclasses(tp: Any) -> bool:
    if tp is None:
        return False
    tp, _ = _strip_optional(tp)
    origin = get_origin(tp)
    if origin in (tuple, list, frozenset):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return bool(args) and _is_union_of_dataclasses(args[0])
    if origin in (Union, types.UnionType):
        return all(dataclasses.is_dataclass(a) for a in get_args(tp))
    return False


def from_jsonable(tp: Any, data: Any) -> Any:
    """Rebuild a value of type *tp* from what :func:`to_jsonable` produced."""
    if tp is Any:
        return data
    tp, optional = _strip_optional(tp)
    if data is None:
        if optional:
            return None
        raise ValueError(f"missing value for {tp}")
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        choices = {a.__name__: a for a in get_args(tp)}
        name = data.get("type") if isinstance(data, dict) else None
        if name not in choices:
            raise ValueError(f"unknown variant {name!r}")
        return from_jsonable(choices[name], data)
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_jsonable(args[0], v) for v in data)
        return tuple(from_jsonable(a, v) for a, v in zip(args, data))
    if origin is frozenset:
        (arg,) = get_args(tp)
        return frozenset(from_jsonable(arg, v) for v in data)
    if origin is list:
        (arg,) = get_args(tp)
        return [from_jsonable(arg, v) for v in data]
    if origin is dict:
        _k, varg = get_args(tp)
        return {str(k): from_jsonable(varg, v) for k, v in data.items()}
    if origin is typing.Literal:
        return data
    if isinstance(tp, type):
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            kwargs = {}
            for f in dataclasses.fields(tp):
                if not f.init:
                    continue
                if f.name in data:
                    kwargs[f.name] = from_jsonable(hints[f.name], data[f.name])
            return tp(**kwargs)
        if issubclass(tp, enum.Enum):
            return tp(data)
        if tp is datetime:
            return datetime.fromisoformat(data)
        if tp is date:
            return date.fromisoformat(data)
        if tp is timedelta:
            return timedelta(seconds=float(data))
        if tp in (str, int, float, bool):
            return tp(data)
    raise TypeError(f"cannot deserialise into {tp!r}")
