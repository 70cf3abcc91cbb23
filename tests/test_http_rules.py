"""The pure HTTP rules (RFC 9110/9111), exhaustively, without a server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from perfkit.http_rules import (
    ETag,
    Precondition,
    RequestConditions,
    StoreReason,
    accept_encoding_key,
    acceptable_codings,
    available_etag_function,
    cache_control_seconds,
    etag_function,
    evaluate_preconditions,
    format_cache_control,
    format_http_date,
    freshness_lifetime,
    make_etag,
    merge_vary,
    negotiate_encoding,
    not_modified_headers,
    parse_accept_encoding,
    parse_cache_control,
    parse_etag,
    parse_etag_list,
    parse_http_date,
    parse_vary,
    request_bypass_reason,
    response_store_reason,
)

# -- ETag syntax and comparison (§8.8.3) ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"abc"', ETag("abc")),
        ('W/"abc"', ETag("abc", weak=True)),
        ('""', ETag("")),
        ('  "x y" ', None),  # space is not an etagc
        ("W/123", None),  # fastapi-cache's invalid form
        ("abc", None),
        ('"abc', None),
        ('w/"abc"', None),  # W is case-sensitive
        ('"a"b"', None),
        ('"\x7f"', None),
    ],
)
def test_parse_etag(text: str, expected: ETag | None) -> None:
    assert parse_etag(text) == expected


def test_etag_str_round_trips() -> None:
    for tag in (ETag("x"), ETag("x", weak=True)):
        assert parse_etag(str(tag)) == tag


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        ('W/"1"', 'W/"1"', False, True),
        ('W/"1"', '"1"', False, True),
        ('"1"', '"1"', True, True),
        ('"1"', '"2"', False, False),
        ('W/"1"', 'W/"2"', False, False),
    ],
)
def test_comparison_table_from_rfc_9110(a: str, b: str, strong: bool, weak: bool) -> None:
    ta, tb = parse_etag(a), parse_etag(b)
    assert ta is not None and tb is not None
    assert ta.strong_equals(tb) is strong
    assert ta.weak_equals(tb) is weak


@pytest.mark.parametrize(
    ("value", "tags", "star"),
    [
        ("*", [], True),
        (' * ', [], True),
        ('"a", "b"', [ETag("a"), ETag("b")], False),
        ('"a",W/"b" ,  "c"', [ETag("a"), ETag("b", True), ETag("c")], False),
        ('"a", garbage, W/123, "b"', [ETag("a"), ETag("b")], False),
        ('"a" junk, "b"', [ETag("b")], False),
        ('"unterminated, "b"', [ETag("b")], False),
        ('"a", *', [ETag("a")], False),  # * only counts alone
        ("", [], False),
        (",,,", [], False),
        ('"a,b"', [ETag("a,b")], False),
    ],
)
def test_parse_etag_list(value: str, tags: list[ETag], star: bool) -> None:
    assert parse_etag_list(value) == (tags, star)


def test_make_etag_is_strong_quoted_and_sensitive_to_every_byte() -> None:
    for algorithm in ("sha256", "blake2b", "xxh3"):
        if algorithm == "xxh3":
            pytest.importorskip("xxhash")
        tag = make_etag(b"hello", algorithm)  # type: ignore[arg-type]
        parsed = parse_etag(tag)
        assert parsed is not None and not parsed.weak
        assert len(parsed.opaque) == 32
        assert make_etag(b"hellp", algorithm) != tag  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="algorithm"):
        make_etag(b"x", "md5")  # type: ignore[arg-type]


def test_make_etag_identical_across_processes_with_different_hash_seeds() -> None:
    code = "from perfkit.http_rules import make_etag; print(make_etag(b'perfkit' * 100))"
    outputs = set()
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        outputs.add(out.stdout.strip())
    assert outputs == {make_etag(b"perfkit" * 100)}


# -- dates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
     "Sun Nov  6 08:49:37 1994"],
)
def test_parse_http_date_accepts_the_three_formats(text: str) -> None:
    assert parse_http_date(text) == 784111777.0


@pytest.mark.parametrize("text", [None, "", "yesterday", "Sun, 99 Nov 1994 08:49:37 GMT"])
def test_parse_http_date_rejects_garbage(text: str | None) -> None:
    assert parse_http_date(text) is None


def test_format_http_date() -> None:
    assert format_http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"


# -- preconditions (§13.1, §13.2.2) ----------------------------------------------------------

T = '"v1"'
LM = 784111777.0
LM_TEXT = "Sun, 06 Nov 1994 08:49:37 GMT"


def cond(**headers: str | list[str]) -> RequestConditions:
    raw: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            raw.append((name.replace("_", "-").encode(), v.encode()))
    return RequestConditions.from_asgi(raw)


@pytest.mark.parametrize(
    ("method", "conditions", "expected"),
    [
        ("GET", cond(), Precondition.PROCEED),
        ("GET", cond(if_none_match=T), Precondition.NOT_MODIFIED),
        ("HEAD", cond(if_none_match=T), Precondition.NOT_MODIFIED),
        ("GET", cond(if_none_match='W/"v1"'), Precondition.NOT_MODIFIED),  # weak comparison
        ("GET", cond(if_none_match='"x", "v1"'), Precondition.NOT_MODIFIED),
        ("GET", cond(if_none_match=['"x"', '"v1"']), Precondition.NOT_MODIFIED),  # two lines
        ("GET", cond(if_none_match="*"), Precondition.NOT_MODIFIED),
        ("GET", cond(if_none_match='"x"'), Precondition.PROCEED),
        ("GET", cond(if_none_match="garbage, W/1"), Precondition.PROCEED),
        ("POST", cond(if_none_match=T), Precondition.FAILED),
        ("PUT", cond(if_none_match="*"), Precondition.FAILED),
        ("DELETE", cond(if_none_match=T), Precondition.FAILED),
        # If-Match: strong comparison.
        ("PUT", cond(if_match=T), Precondition.PROCEED),
        ("PUT", cond(if_match='W/"v1"'), Precondition.FAILED),
        ("PUT", cond(if_match='"x"'), Precondition.FAILED),
        ("PUT", cond(if_match="*"), Precondition.PROCEED),
        ("GET", cond(if_match='"x"'), Precondition.FAILED),
        # If-Match passes, then If-None-Match is still evaluated.
        ("GET", cond(if_match=T, if_none_match=T), Precondition.NOT_MODIFIED),
        # If-Modified-Since at one-second resolution.
        ("GET", cond(if_modified_since=LM_TEXT), Precondition.NOT_MODIFIED),
        ("GET", cond(if_modified_since="Sun, 06 Nov 1994 08:49:36 GMT"), Precondition.PROCEED),
        ("GET", cond(if_modified_since="not a date"), Precondition.PROCEED),
        ("GET", cond(if_modified_since=[LM_TEXT, LM_TEXT]), Precondition.PROCEED),  # several
        ("POST", cond(if_modified_since=LM_TEXT), Precondition.PROCEED),  # GET/HEAD only
        # ignored when If-None-Match is present, even if INM does not match
        ("GET", cond(if_none_match='"x"', if_modified_since=LM_TEXT), Precondition.PROCEED),
        # If-Unmodified-Since
        ("PUT", cond(if_unmodified_since="Sun, 06 Nov 1994 08:49:36 GMT"), Precondition.FAILED),
        ("PUT", cond(if_unmodified_since=LM_TEXT), Precondition.PROCEED),
        ("PUT", cond(if_match=T, if_unmodified_since="Sat, 01 Jan 1994 00:00:00 GMT"),
         Precondition.PROCEED),  # ignored under If-Match
        # Range comes after the preconditions: 304, not 206.
        ("GET", cond(if_none_match=T, range="bytes=0-1"), Precondition.NOT_MODIFIED),
        ("GET", cond(range="bytes=0-1", if_range='"other"'), Precondition.IGNORE_RANGE),
        ("GET", cond(range="bytes=0-1", if_range=T), Precondition.PROCEED),
        ("GET", cond(range="bytes=0-1", if_range='W/"v1"'), Precondition.IGNORE_RANGE),
        ("GET", cond(range="bytes=0-1", if_range=LM_TEXT), Precondition.PROCEED),
        ("GET", cond(range="bytes=0-1", if_range="Sat, 01 Jan 1994 00:00:00 GMT"),
         Precondition.IGNORE_RANGE),
        ("GET", cond(if_range=T), Precondition.PROCEED),  # no Range: If-Range is ignored
    ],
)
def test_evaluate_preconditions(
    method: str, conditions: RequestConditions, expected: Precondition
) -> None:
    assert evaluate_preconditions(method, conditions, T, LM + 0.9) is expected


def test_star_depends_on_existence() -> None:
    assert evaluate_preconditions("PUT", cond(if_match="*"), None, exists=False) is (
        Precondition.FAILED
    )
    assert evaluate_preconditions("PUT", cond(if_none_match="*"), None, exists=False) is (
        Precondition.PROCEED
    )


def test_without_validators_conditions_do_not_match() -> None:
    assert evaluate_preconditions("GET", cond(if_none_match=T), None) is Precondition.PROCEED
    assert evaluate_preconditions("GET", cond(if_modified_since=LM_TEXT), None) is (
        Precondition.PROCEED
    )


def test_not_modified_headers_keep_exactly_the_304_set() -> None:
    headers = [
        (b"content-type", b"text/plain"), (b"content-length", b"5"),
        (b"content-encoding", b"gzip"), (b"etag", b'"a"'), (b"vary", b"Accept"),
        (b"cache-control", b"max-age=5"), (b"expires", b"x"), (b"date", b"d"),
        (b"content-location", b"/a"), (b"set-cookie", b"a=1"), (b"last-modified", b"m"),
        (b"content-language", b"en"),
    ]
    kept = {k for k, _ in not_modified_headers(headers)}
    assert kept == {b"etag", b"vary", b"cache-control", b"expires", b"date",
                    b"content-location", b"set-cookie", b"last-modified"}


# -- Cache-Control ------------------------------------------------------------------


def test_parse_cache_control() -> None:
    cc = parse_cache_control('Public, MAX-AGE=60, private="set-cookie, x", no-cache')
    assert cc == {"public": None, "max-age": "60", "private": "set-cookie, x", "no-cache": None}
    assert parse_cache_control(None) == {}
    assert parse_cache_control(" , ,") == {}


def test_repeated_freshness_directive_takes_the_most_restrictive() -> None:
    assert cache_control_seconds(parse_cache_control("max-age=60, max-age=10"), "max-age") == 10
    assert cache_control_seconds(parse_cache_control("max-age=1, max-age=60"), "max-age") == 1


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("max-age=5", 5), ("max-age=abc", 0), ("max-age=-1", 0), ("max-age", 0), ("", None),
     ("max-age=99999999999", 2_147_483_648), ('max-age="7"', 7)],
)
def test_cache_control_seconds(value: str, seconds: int | None) -> None:
    assert cache_control_seconds(parse_cache_control(value), "max-age") == seconds


def test_format_cache_control() -> None:
    assert format_cache_control({"public": True, "max_age": 60, "private": False,
                                 "no-cache": "set-cookie, x"}) == (
        'public, max-age=60, no-cache="set-cookie, x"'
    )


# -- Vary ---------------------------------------------------------------------------------


def test_parse_and_merge_vary() -> None:
    assert parse_vary("Accept-Encoding, accept-encoding, Cookie") == ["accept-encoding", "cookie"]
    assert parse_vary("Accept, *") == ["*"]
    assert merge_vary("Accept", "accept", "Accept-Encoding") == "Accept, Accept-Encoding"
    assert merge_vary(None, "Accept-Encoding") == "Accept-Encoding"
    assert merge_vary("*", "Accept-Encoding") == "*"
    assert merge_vary("Accept", "*") == "*"


# -- Accept-Encoding (§12.5.3) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, "identity"),
        ("", "identity"),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("gzip;q=0", "identity"),
        ("identity, gzip;q=0", "identity"),
        ("notgzip", "identity"),
        ("*", "gzip"),
        ("*;q=0", None),
        ("br;q=1, *;q=0.5", "gzip"),
        ("gzip;q=0.5, identity;q=0.8", "identity"),
        ("identity;q=0", None),
        ("identity;q=0, gzip", "gzip"),
        ("gzip;q=abc", "identity"),  # malformed member ignored
        ("gzip;q=2", "identity"),  # out of range: malformed
        ("x-gzip", "gzip"),
        ("deflate, gzip;q=0.001", "gzip"),
    ],
)
def test_negotiate_gzip(header: str | None, chosen: str | None) -> None:
    assert negotiate_encoding(header, ("gzip",)) == chosen


def test_client_preference_among_codings_and_server_tie_break() -> None:
    assert negotiate_encoding("gzip;q=0.5, br", ("zstd", "br", "gzip")) == "br"
    assert negotiate_encoding("gzip, br", ("zstd", "br", "gzip")) == "br"
    assert negotiate_encoding("gzip, br, zstd", ("zstd", "br", "gzip")) == "zstd"


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding("GZip;Q=0.5, br , ;q=1") == {"gzip": 0.5, "br": 1.0}


def test_accept_encoding_key_collapses_equivalent_headers() -> None:
    codings = ("gzip", "br")
    assert accept_encoding_key("gzip, deflate", codings) == accept_encoding_key(
        "deflate,GZIP;q=1.0", codings
    )
    assert accept_encoding_key("gzip", codings) != accept_encoding_key("identity", codings)
    assert accept_encoding_key(None, codings) != accept_encoding_key("", codings)
    assert acceptable_codings("gzip;q=0", codings) == ["identity"]


# -- storability (RFC 9111 §3) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, None),
        ({"has_cookie": True}, StoreReason.COOKIE),
        ({"has_authorization": True}, StoreReason.AUTHORIZATION),
        ({"has_authorization": True, "principal_keyed": True}, None),
        ({"request_cache_control": "no-store"}, StoreReason.REQUEST_NO_STORE),
        ({"request_cache_control": "no-cache"}, None),  # not a DoS lever
        ({"method": "POST"}, StoreReason.METHOD),
        ({"method": "HEAD"}, None),
    ],
)
def test_request_bypass_reason(kwargs: dict[str, object], reason: StoreReason | None) -> None:
    args: dict[str, object] = {"has_authorization": False, "has_cookie": False,
                               "request_cache_control": None}
    args.update(kwargs)
    method = str(args.pop("method", "GET"))
    assert request_bypass_reason(method, **args) is reason  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "cc", "kwargs", "reason"),
    [
        (200, "max-age=60", {}, None),
        (200, "no-store", {}, StoreReason.NO_STORE),
        (200, "private", {}, StoreReason.PRIVATE),
        (200, "no-cache", {}, StoreReason.NO_CACHE),
        (200, "", {"vary": ["*"]}, StoreReason.VARY_STAR),
        (200, "", {"has_set_cookie": True}, StoreReason.SET_COOKIE),
        (206, "", {}, StoreReason.PARTIAL),
        (404, "", {}, StoreReason.STATUS),
        (500, "", {}, StoreReason.STATUS),
        (302, "", {}, StoreReason.STATUS),
        (404, "", {"cacheable_statuses": frozenset({200, 404})}, None),
        (200, "", {"request_has_authorization": True}, StoreReason.AUTHORIZATION),
        (200, "public", {"request_has_authorization": True}, None),
        (200, "s-maxage=5", {"request_has_authorization": True}, None),
        (200, "must-revalidate", {"request_has_authorization": True}, None),
    ],
)
def test_response_store_reason(
    status: int, cc: str, kwargs: dict[str, object], reason: StoreReason | None
) -> None:
    args: dict[str, object] = {"vary": [], "has_set_cookie": False}
    args.update(kwargs)
    result = response_store_reason(status, parse_cache_control(cc), **args)  # type: ignore[arg-type]
    assert result is reason
    if reason is not None:
        assert str(reason) == reason.value  # usable as a metric label and log value


@pytest.mark.parametrize(
    ("cc", "expires", "date", "default", "lifetime"),
    [
        ("s-maxage=10, max-age=5", None, None, 99, 10.0),
        ("max-age=5", "Sun, 06 Nov 1994 08:50:37 GMT", LM_TEXT, 99, 5.0),
        ("", "Sun, 06 Nov 1994 08:50:37 GMT", LM_TEXT, 99, 60.0),
        ("", "0", None, 99, 0.0),  # invalid Expires: already expired
        ("", None, None, 99, 99),
        ("", None, None, None, None),
        ("max-age=0", None, None, 99, 0.0),
    ],
)
def test_freshness_precedence(
    cc: str, expires: str | None, date: str | None, default: float | None,
    lifetime: float | None,
) -> None:
    assert freshness_lifetime(parse_cache_control(cc), expires=expires, date=date,
                              default=default, now=0.0) == lifetime


def test_the_default_etag_is_xxh3_128_of_the_body() -> None:
    xxhash = pytest.importorskip("xxhash")
    body = b'{"id": 1}' * 200
    assert make_etag(body) == f'"{xxhash.xxh3_128_hexdigest(body)}"'
    assert etag_function()(body) == make_etag(body, "xxh3")


def test_without_xxhash_the_default_names_the_fix_and_side_etags_fall_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "xxhash", None)  # import xxhash now raises ImportError
    with pytest.raises(ImportError, match=r"algorithm='sha256'"):
        etag_function()
    assert available_etag_function()(b"abc") == make_etag(b"abc", "sha256")
