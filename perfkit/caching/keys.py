"""Cache keys that are correct by construction and cheap on the hot path.

A key is a tuple ``(namespace, codes, *values)``:

- ``namespace`` is ``module:qualname`` (or the user's ``namespace=``), so two functions
  never share an entry, even in one shared backend;
- ``codes`` is a string with one type code per value (``i`` int, ``f`` float, ``b`` bool,
  ``s`` str, ``y`` bytes, ``n`` None, ``c`` canonical form), so ``1``, ``1.0`` and ``True``
  (equal and hash-equal in Python) never share an entry;
- the values are the call's arguments bound to the signature with defaults applied, so
  ``f(1, 2)``, ``f(1, b=2)`` and ``f(a=1, b=2)`` are one entry. Arguments that are not
  plain scalars are turned into a canonical, type-tagged nested tuple of scalars
  (lists, dicts, sets, dataclasses, enums, datetimes, Decimal, UUID, numpy arrays...).

Every key is made only of str/int/float/bool/bytes/None and tuples, so its ``repr`` is
deterministic across processes and machines; :func:`shared_key` hashes that ``repr`` with
BLAKE2b to make the short string that Redis stores. Nothing here uses ``hash()``, ``id()``
or an object's default ``repr``.

The hot path: when every parameter is passed positionally and all are plain scalars, the
key is ``(namespace, codes) + args`` with ``codes`` looked up from the argument types in a
small dict: no signature binding, no string formatting.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import pathlib
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from perfkit.caching.backends.base import Key

_SCALAR_CODES: dict[type, str] = {
    int: "i",
    float: "f",
    bool: "b",
    str: "s",
    bytes: "y",
    type(None): "n",
}
_CODES_BY_TYPES: dict[tuple[type, ...], str | None] = {}
_CODES_CACHE_MAX = 4096


def _codes_for(types: tuple[type, ...]) -> str | None:
    """Type codes for a tuple of argument types, or None if any is not a plain scalar."""
    codes = _CODES_BY_TYPES.get(types, "")
    if codes != "":
        return codes
    parts = [_SCALAR_CODES.get(t) for t in types]
    result = None if None in parts else "".join(parts)  # type: ignore[arg-type]
    if len(_CODES_BY_TYPES) < _CODES_CACHE_MAX:
        _CODES_BY_TYPES[types] = result
    return result


class UnkeyableArgument(TypeError):
    """An argument has no stable value to put in a cache key."""


def canonical(value: Any, where: str = "argument") -> Hashable:
    """A type-tagged nested tuple of scalars that is equal iff the values are equal.

    Floats are kept as their ``repr``, so ``0.0`` and ``-0.0`` differ and ``nan`` equals
    itself. Raises :class:`UnkeyableArgument` naming ``where`` for values with no stable
    identity across processes (plain objects, functions, open files, cycles...).
    """
    try:
        return _canonical(value, where)
    except RecursionError:
        raise UnkeyableArgument(
            f"cannot build a cache key from {where}: it is nested too deeply or contains "
            "itself; pass key=... to cached()"
        ) from None


def _canonical(value: Any, where: str) -> Hashable:
    canonical = _canonical
    t = type(value)
    code = _SCALAR_CODES.get(t)
    if code is not None:
        return (code, float.__repr__(value) if t is float else value)
    if t is tuple or t is list:
        return (t.__name__, tuple(canonical(v, where) for v in value))
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return ("namedtuple", _type_name(t), tuple(canonical(v, where) for v in value))
    if isinstance(value, (list, tuple)):
        return (_type_name(t), tuple(canonical(v, where) for v in value))
    if isinstance(value, Mapping):
        items = [(canonical(k, where), canonical(v, where)) for k, v in value.items()]
        return ("dict", tuple(sorted(items, key=repr)))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted((canonical(v, where) for v in value), key=repr)))
    if isinstance(value, enum.Enum):
        return ("enum", _type_name(t), canonical(value.value, where))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = tuple(
            (f.name, canonical(getattr(value, f.name), where))
            for f in dataclasses.fields(value)
            if f.compare
        )
        return ("dataclass", _type_name(t), fields)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return (t.__name__, value.isoformat())
    if isinstance(value, _dt.timedelta):
        return ("timedelta", value.days, value.seconds, value.microseconds)
    if isinstance(value, decimal.Decimal):
        return ("decimal", str(value))
    if isinstance(value, uuid.UUID):
        return ("uuid", value.hex)
    if isinstance(value, pathlib.PurePath):
        return ("path", type(value).__name__, str(value))
    if isinstance(value, (bytearray, memoryview)):
        return ("bytes", bytes(value))
    if isinstance(value, (int, float, str, bytes)):  # subclasses of scalars (IntFlag...)
        return (_type_name(t), canonical(_base(value), where))
    if isinstance(value, type):
        return ("type", _type_name(value))
    if t.__module__ == "numpy":
        return _canonical_numpy(value, where)
    raise UnkeyableArgument(
        f"cannot build a cache key from {where} of type {_type_name(t)}: it has no stable "
        "value across processes; pass key=... to cached() to say what identifies it"
    )


def _base(value: Any) -> Any:
    base: Any
    for base in (int, float, str, bytes):
        if isinstance(value, base):
            return base(value)
    return value  # pragma: no cover - callers only pass scalar subclasses


def _canonical_numpy(value: Any, where: str) -> Hashable:
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return ("ndarray-object", value.shape, canonical(value.tolist(), where))
        data = np.ascontiguousarray(value).tobytes()
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        return ("ndarray", value.dtype.str, value.shape, digest)
    if isinstance(value, np.generic):
        return ("npscalar", value.dtype.str, canonical(value.item(), where))
    raise UnkeyableArgument(
        f"cannot build a cache key from {where} of type {_type_name(type(value))}; "
        "pass key=... to cached()"
    )


def _type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def shared_key(key: Key, prefix: str = "perfkit:") -> str:
    """The string form of ``key`` for a shared store: readable prefix, hashed body.

    ``perfkit:<namespace>:<blake2b-128 of repr(rest)>``; the namespace stays readable
    for operators (and for deleting one function's entries by prefix).
    """
    body = hashlib.blake2b(repr(key[1:]).encode(), digest_size=16).hexdigest()
    return f"{prefix}{key[0]}:{body}"


def namespace_pattern(namespace: str, prefix: str = "perfkit:") -> str:
    """A SCAN pattern matching the shared keys of ``namespace`` and of no other one.

    The hash part is exactly 32 characters, so ``svc`` never matches ``svc:v2:<hash>``.
    """
    escaped = "".join("\\" + ch if ch in "*?[]\\" else ch for ch in namespace)
    return f"{prefix}{escaped}:" + "?" * 32


def default_namespace(func: Callable[..., Any]) -> str:
    return f"{func.__module__}:{func.__qualname__}"


class KeyBuilder:
    """Builds keys for one decorated function; everything costly is decided here, once.

    ``skip_first`` drops the first parameter (``self``/``cls``) from the signature: the
    decorator passes the instance's identity separately as ``owner``.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        namespace: str,
        key: Callable[..., Any] | None = None,
        skip_first: bool = False,
    ) -> None:
        self.namespace = namespace
        self.custom = key
        sig = inspect.signature(func)
        params = list(sig.parameters.values())
        if skip_first and params:
            params = params[1:]
        self._signature = sig.replace(parameters=params)
        self._params = params
        simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
        )
        # The fast path applies when every parameter was passed positionally.
        self._fast_arity = len(params) if simple else -1
        self._defaults = tuple(p.default for p in params)
        self._required = sum(1 for p in params if p.default is p.empty) if simple else 0
        self.build = self._make_build()

    def __call__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        return self.build(args, kwargs)

    def _make_build(self) -> Callable[[tuple[Any, ...], dict[str, Any]], Key]:
        """The per-call key function, specialised once for this signature."""
        if self.custom is not None:
            return self._custom_key
        namespace, arity, slow = self.namespace, self._fast_arity, self._bound_key
        required = self._required
        defaults = self._defaults
        scalar_codes, codes_for, float_repr = _SCALAR_CODES, _codes_for, float.__repr__
        if arity == 1 and required == 1:

            def build1(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
                if not kwargs and len(args) == 1:
                    code = scalar_codes.get(type(args[0]))
                    if code is not None:
                        if code == "f":  # by repr: 0.0 != -0.0, nan == nan
                            return (namespace, code, float_repr(args[0]))
                        return (namespace, code, args[0])
                return slow(args, kwargs)

            return build1

        def build(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
            n = len(args)
            if not kwargs and required <= n <= arity:
                if n < arity:  # trailing parameters left to their defaults
                    args = args + defaults[n:]
                codes = codes_for(tuple(map(type, args)))
                if codes is not None:
                    if "f" in codes:
                        args = tuple(float_repr(a) if type(a) is float else a for a in args)
                    return (namespace, codes, *args)
            return slow(args, kwargs)

        return build

    def with_owner(self, owner: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        """Key for a method call: the owner's identity comes right after the namespace."""
        key = self(args, kwargs)
        return (key[0], owner, *key[1:])

    def _custom_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        assert self.custom is not None
        return (self.namespace, "k", canonical(self.custom(*args, **kwargs), "key= result"))

    def _bound_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Key:
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.namespace}: {exc}") from None
        bound.apply_defaults()
        codes: list[str] = []
        values: list[Hashable] = []
        for param in self._params:
            value = bound.arguments[param.name]
            if param.kind is param.VAR_POSITIONAL:
                value = ("*", tuple(canonical(v, f"*{param.name}") for v in value))
                codes.append("c")
            elif param.kind is param.VAR_KEYWORD:
                items = sorted(
                    (name, canonical(v, f"**{param.name}[{name!r}]"))
                    for name, v in value.items()
                )
                value = ("**", tuple(items))
                codes.append("c")
            else:
                code = _SCALAR_CODES.get(type(value))
                if code == "f":
                    value = float.__repr__(value)
                elif code is None:
                    value = canonical(value, f"parameter {param.name!r}")
                    code = "c"
                codes.append(code)
            values.append(value)
        return (self.namespace, "".join(codes), *values)
