"""Validator-first conditional requests for one Starlette/FastAPI route.

``@conditional(etag=lambda request: ...)`` computes the current ETag (and optionally
Last-Modified) from the request *before* the handler runs. A matching If-None-Match on
GET/HEAD answers 304, a failed If-Match (or ``If-None-Match: *`` on an existing resource)
on an unsafe method answers 412, and in both cases the handler, with its database work
and side effects, never runs.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

from perfkit.asgi._asgi import SCOPE_304_TYPE
from perfkit.asgi.etag import SCOPE_ETAG
from perfkit.http_rules import (
    Precondition,
    RequestConditions,
    evaluate_preconditions,
    format_http_date,
    parse_etag,
)

F = TypeVar("F", bound=Callable[..., Any])
Validator = Callable[[Any], Any]
"""``(request) -> value | None`` or an async function returning one."""


def _starlette() -> tuple[type[Any], type[Any]]:
    try:
        from starlette.requests import Request
        from starlette.responses import Response
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "perfkit.asgi.conditional needs Starlette: pip install 'perfkit[asgi]'"
        ) from exc
    return Request, Response


def _normalise_etag(value: object, weak: bool) -> str | None:
    """Accept ``'abc'``, ``'"abc"'`` or ``'W/"abc"'``; return the quoted form."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"etag validator must return str or None, got {type(value).__name__}")
    if value.startswith(('"', "W/")):
        tag = parse_etag(value)
        if tag is None:
            raise ValueError(f"etag validator returned a malformed entity tag: {value!r}")
        return str(tag)
    quoted = f'W/"{value}"' if weak else f'"{value}"'
    if parse_etag(quoted) is None:
        raise ValueError(
            f"etag validator returned {value!r}: only visible ASCII without '\"' is allowed"
        )
    return quoted


def conditional(
    etag: Validator | None = None,
    *,
    last_modified: Validator | None = None,
    weak: bool = False,
    cache_control: str | None = None,
    media_type: str | None = None,
) -> Callable[[F], F]:
    """Decorate a route handler that takes a ``Request`` so preconditions run first.

    ``etag(request)`` returns the current tag (bare or quoted) or None when the resource
    does not exist (then ``If-Match: *`` fails and ``If-None-Match: *`` passes);
    ``last_modified(request)`` returns a POSIX timestamp or None. Either may be async.
    The response gets the ETag, Last-Modified and ``cache_control`` headers: directly when
    the handler returns a Response (or FastAPI injects one), else through
    :class:`~perfkit.asgi.ETagMiddleware`, which reads it from the scope.

    ``media_type`` is the Content-Type of the route's 200s. The 304 is answered before the
    handler, so without it a compression layer cannot tell whether the 200 would have
    carried ``Vary: Accept-Encoding`` (RFC 9110 §15.4.5 asks the 304 to carry it too).
    """
    if etag is None and last_modified is None:
        raise TypeError("conditional() needs etag=..., last_modified=... or both")
    if media_type is not None and (not isinstance(media_type, str) or not media_type.isascii()
                                   or not media_type.strip()):
        raise ValueError(f"media_type: expected a Content-Type such as 'application/json', "
                         f"got {media_type!r}")
    request_cls, response_cls = _starlette()

    def decorate(handler: F) -> F:
        _check_takes_request(handler, request_cls)

        async def preconditions(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            request = _find(request_cls, args, kwargs)
            tag = _normalise_etag(await _call(etag, request), weak) if etag else None
            modified = await _call(last_modified, request) if last_modified else None
            headers: dict[str, str] = {}
            if tag is not None:
                headers["etag"] = tag
                request.scope[SCOPE_ETAG] = tag
            if modified is not None:
                headers["last-modified"] = format_http_date(float(modified))
            if cache_control:
                headers["cache-control"] = cache_control
            conditions = RequestConditions.from_asgi(request.scope["headers"])
            outcome = evaluate_preconditions(
                request.method, conditions, tag, modified,
                exists=tag is not None or modified is not None,
            )
            if outcome is Precondition.NOT_MODIFIED:
                if media_type:
                    request.scope[SCOPE_304_TYPE] = media_type.encode("latin-1")
                return None, response_cls(status_code=304, headers=headers)
            if outcome is Precondition.FAILED:
                return None, response_cls(status_code=412, headers=headers)
            return headers, None

        def finish(result: Any, headers: dict[str, str], kwargs: dict[str, Any]) -> Any:
            target = result if isinstance(result, response_cls) else next(
                (v for v in kwargs.values() if isinstance(v, response_cls)), None
            )
            if target is not None:
                for name, value in headers.items():
                    if name not in target.headers:
                        target.headers[name] = value
            return result

        if inspect.iscoroutinefunction(handler):

            @functools.wraps(handler)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                headers, early = await preconditions(args, kwargs)
                if early is not None:
                    return early
                return finish(await handler(*args, **kwargs), headers, kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(handler)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            # Sync handlers run in a worker thread; so do their (sync) validators.
            coro = preconditions(args, kwargs)
            try:
                coro.send(None)
            except StopIteration as stop:
                headers, early = stop.value
            else:  # pragma: no cover - an async validator on a sync route
                coro.close()
                raise TypeError("a sync handler needs sync etag/last_modified validators")
            if early is not None:
                return early
            return finish(handler(*args, **kwargs), headers, kwargs)

        return cast(F, sync_wrapper)

    return decorate


async def _call(fn: Validator, request: Any) -> Any:
    value = fn(request)
    if inspect.isawaitable(value):
        value = await value
    return value


def _find(request_cls: type[Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    for value in (*args, *kwargs.values()):
        if isinstance(value, request_cls):
            return value
    raise TypeError("conditional(): the handler was called without a Request argument")


def _check_takes_request(handler: Callable[..., Any], request_cls: type[Any]) -> None:
    params = inspect.signature(handler).parameters.values()
    for param in params:
        ann = param.annotation
        if param.name == "request" or ann is request_cls or ann in ("Request", request_cls):
            return
        if isinstance(ann, type) and issubclass(ann, request_cls):
            return
    raise TypeError(
        f"conditional(): {getattr(handler, '__qualname__', handler)!r} must take a "
        "'request: Request' parameter so the validator can see the request"
    )
