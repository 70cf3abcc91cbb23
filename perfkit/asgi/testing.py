"""Assertions for the tests of an app behind perfkit's middleware (no pytest needed).

Each works with any client whose ``get(url, headers=...)`` returns a response with
``status_code``, ``headers`` and ``content`` (Starlette's ``TestClient``, ``httpx.Client``);
the ``a``-prefixed forms take an async client (``httpx.AsyncClient``). The checks
themselves are pure functions over two responses (``*_problems``), returning what is wrong
in words, so a failure message says which rule broke.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from perfkit.http_rules import parse_etag, parse_vary

__all__ = [
    "aassert_conditional",
    "aassert_no_leak",
    "assert_conditional",
    "assert_headers_lint",
    "assert_no_leak",
    "conditional_problems",
    "header_problems",
    "leak_problems",
]

# What a 304 must repeat from the 200 when the 200 has it (RFC 9110 §15.4.5).
_KEPT_ON_304 = ("etag", "vary", "cache-control", "expires", "content-location")
# What a 304 must not carry (representation metadata of a body it does not have).
_DROPPED_ON_304 = ("content-type", "content-encoding")


def conditional_problems(first: Any, second: Any) -> list[str]:
    """What is wrong with ``second``, the replay of ``first`` with its ETag in If-None-Match."""
    etag = first.headers.get("etag")
    if first.status_code != 200:
        return [f"the first response is {first.status_code}, not 200"]
    if etag is None:
        return ["the first response has no ETag"]
    problems = header_problems(first)
    if second.status_code != 304:
        return [*problems, f"If-None-Match: {etag} got {second.status_code}, not 304"]
    if second.content:
        problems.append(f"the 304 has a body of {len(second.content)} bytes")
    for name in _KEPT_ON_304:
        if name in first.headers and second.headers.get(name) != first.headers[name]:
            problems.append(f"the 304 lacks the 200's {name}: {first.headers[name]!r} "
                            f"(got {second.headers.get(name)!r})")
    for name in _DROPPED_ON_304:
        if name in second.headers:
            problems.append(f"the 304 carries {name}")
    length = second.headers.get("content-length")
    if length not in (None, "0", first.headers.get("content-length")):
        problems.append(f"the 304's content-length {length} differs from the 200's")
    return problems


def leak_problems(alice: Any, bob: Any) -> list[str]:
    """What of Alice's response reached Bob (body, or any Set-Cookie value of hers)."""
    problems = []
    if alice.content and alice.content == bob.content:
        problems.append("Bob got Alice's body")
    bob_cookies = _set_cookies(bob)
    for cookie in _set_cookies(alice):
        if cookie in bob_cookies:
            problems.append(f"Bob got Alice's Set-Cookie {cookie.split('=', 1)[0]!r}")
    return problems


def header_problems(response: Any) -> list[str]:
    """Header lint: a quoted, valid ETag; ``Vary: Accept-Encoding`` on an encoded body."""
    problems = []
    etag = response.headers.get("etag")
    if etag is not None and parse_etag(etag) is None:
        problems.append(f"ETag {etag!r} is not a quoted entity tag (RFC 9110 §8.8.3)")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    vary = parse_vary(response.headers.get("vary"))
    if encoding != "identity" and "accept-encoding" not in vary and "*" not in vary:
        problems.append(f"Content-Encoding {encoding} without Vary: Accept-Encoding")
    return problems


def assert_conditional(client: Any, url: str, *,
                       headers: Mapping[str, str] | None = None) -> Any:
    """GET ``url``, replay it with its ETag in If-None-Match, expect a correct 304.

    Returns the first (200) response.
    """
    first = client.get(url, headers=dict(headers or {}))
    second = client.get(url, headers=_replay_headers(first, headers))
    _raise(conditional_problems(first, second), f"conditional GET {url}")
    return first


async def aassert_conditional(client: Any, url: str, *,
                              headers: Mapping[str, str] | None = None) -> Any:
    """:func:`assert_conditional` for an async client."""
    first = await client.get(url, headers=dict(headers or {}))
    second = await client.get(url, headers=_replay_headers(first, headers))
    _raise(conditional_problems(first, second), f"conditional GET {url}")
    return first


def assert_no_leak(client: Any, url: str, *, alice: Mapping[str, str],
                   bob: Mapping[str, str]) -> None:
    """GET a per-user ``url`` as Alice, then as Bob (e.g. two ``Authorization`` or
    ``Cookie`` headers): Bob must get neither Alice's body nor her Set-Cookie.

    The route must answer each user differently (echo the user), or a shared body is not
    a leak but the same page.
    """
    first = client.get(url, headers=dict(alice))
    second = client.get(url, headers=dict(bob))
    _raise(leak_problems(first, second), f"two identities on {url}")


async def aassert_no_leak(client: Any, url: str, *, alice: Mapping[str, str],
                          bob: Mapping[str, str]) -> None:
    """:func:`assert_no_leak` for an async client."""
    first = await client.get(url, headers=dict(alice))
    second = await client.get(url, headers=dict(bob))
    _raise(leak_problems(first, second), f"two identities on {url}")


def assert_headers_lint(response: Any) -> None:
    """Fail with every :func:`header_problems` finding of ``response``."""
    _raise(header_problems(response), "response headers")


def _replay_headers(first: Any, headers: Mapping[str, str] | None) -> dict[str, str]:
    etag = first.headers.get("etag")
    return {**(headers or {}), **({"if-none-match": etag} if etag else {})}


def _set_cookies(response: Any) -> list[str]:
    headers = response.headers
    values = headers.get_list("set-cookie") if hasattr(headers, "get_list") else (
        [headers["set-cookie"]] if "set-cookie" in headers else [])
    return [v.split(";", 1)[0].strip() for v in values]


def _raise(problems: list[str], what: str) -> None:
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))
