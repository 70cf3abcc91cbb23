"""HTTP rules without I/O: validators, preconditions, Cache-Control, Vary, codings, storability.

Everything here is a pure function over header values (``str``/``bytes``), so the ASGI
middleware, the per-route decorator and the tests share one implementation of RFC 9110
(semantics) and RFC 9111 (caching). Malformed input never raises: a bad member of a list
is skipped, a bad date is "absent", as the RFCs ask.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from enum import Enum
from typing import Literal

__all__ = [
    "ETag",
    "Precondition",
    "RequestConditions",
    "StoreReason",
    "accept_encoding_key",
    "acceptable_codings",
    "available_etag_function",
    "cache_control_seconds",
    "etag_function",
    "evaluate_preconditions",
    "format_cache_control",
    "format_http_date",
    "freshness_lifetime",
    "make_etag",
    "merge_vary",
    "negotiate_encoding",
    "not_modified_headers",
    "parse_accept_encoding",
    "parse_cache_control",
    "parse_etag",
    "parse_etag_list",
    "parse_http_date",
    "parse_vary",
    "request_bypass_reason",
    "response_store_reason",
]

# -- Entity tags (RFC 9110 §8.8.3) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ETag:
    """An entity tag: ``opaque`` without quotes, ``weak`` for ``W/"..."``."""

    opaque: str
    weak: bool = False

    def __str__(self) -> str:
        return f'W/"{self.opaque}"' if self.weak else f'"{self.opaque}"'

    def strong_equals(self, other: ETag) -> bool:
        """§8.8.3.2 strong comparison: both strong and the opaque parts byte-equal."""
        return not self.weak and not other.weak and self.opaque == other.opaque

    def weak_equals(self, other: ETag) -> bool:
        """§8.8.3.2 weak comparison: the opaque parts equal, ``W/`` ignored."""
        return self.opaque == other.opaque


def _valid_etagc(text: str) -> bool:
    # etagc = %x21 / %x23-7E / obs-text (%x80-FF); no '"', no controls, no space.
    return all(c == "\x21" or "\x23" <= c <= "\x7e" or "\x80" <= c <= "\xff" for c in text)


def parse_etag(value: str) -> ETag | None:
    """Parse one entity tag; ``None`` if it is not ``"..."`` or ``W/"..."`` (e.g. ``W/123``)."""
    value = value.strip()
    weak = value.startswith("W/")
    if weak:
        value = value[2:]
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return None
    opaque = value[1:-1]
    if not _valid_etagc(opaque):
        return None
    return ETag(opaque, weak)


def parse_etag_list(value: str) -> tuple[list[ETag], bool]:
    """Parse If-Match / If-None-Match: ``(tags, star)``; malformed members are skipped.

    A member is malformed if it is not a quoted entity tag (``abc``, ``W/abc``, ``"a``).
    ``*`` counts only as the whole field value (§13.1.1): in a list it is malformed.
    """
    if value.strip() == "*":
        return [], True
    tags: list[ETag] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        if value.startswith("W/", i):
            i += 2
        if i < n and value[i] == '"':
            end = value.find('"', i + 1)
            if end != -1:
                tag = parse_etag(value[start : end + 1])
                after = end + 1
                while after < n and value[after] in " \t":
                    after += 1
                if tag is not None and (after >= n or value[after] == ","):
                    tags.append(tag)
                    i = after
                    continue
        # Malformed member: skip to the next comma.
        comma = value.find(",", i)
        i = n if comma == -1 else comma + 1
    return tags, False


EtagAlgorithm = Literal["sha256", "blake2b", "xxh3"]


def etag_function(algorithm: EtagAlgorithm = "xxh3") -> Callable[[bytes], str]:
    """``body -> quoted strong ETag`` for ``algorithm``, resolved once (see :func:`make_etag`).

    Middleware calls this at construction, so a request pays for the hash and nothing else.
    """
    if algorithm == "sha256":
        sha256 = hashlib.sha256

        def digest(body: bytes) -> str:
            return f'"{sha256(body, usedforsecurity=False).hexdigest()[:32]}"'
    elif algorithm == "blake2b":
        blake2b = hashlib.blake2b

        def digest(body: bytes) -> str:
            return f'"{blake2b(body, digest_size=16, usedforsecurity=False).hexdigest()}"'
    elif algorithm == "xxh3":
        try:
            from xxhash import xxh3_128_hexdigest
        except ImportError as exc:
            raise ImportError(
                "algorithm='xxh3' (the default) needs the xxhash package: "
                "pip install 'perfkit[asgi]' (or xxhash), or pass algorithm='sha256'"
            ) from exc

        def digest(body: bytes) -> str:
            return f'"{xxh3_128_hexdigest(body)}"'
    else:
        raise ValueError(f"algorithm must be 'sha256', 'blake2b' or 'xxh3', got {algorithm!r}")
    return digest


def available_etag_function() -> Callable[[bytes], str]:
    """The default ETag function (xxh3) if ``xxhash`` is installed, else sha256.

    For code that makes an ETag on the side (the response cache, for a stored response
    that has none) and must never fail a request because an optional package is missing.
    """
    try:
        return etag_function("xxh3")
    except ImportError:
        return etag_function("sha256")


_ETAG_FUNCTIONS: dict[str, Callable[[bytes], str]] = {}


def make_etag(body: bytes, algorithm: EtagAlgorithm = "xxh3") -> str:
    """A strong, quoted ETag from the body bytes: 128 bits, identical in every process.

    ``xxh3`` (xxh3-128, the default; the ``xxhash`` package, installed by
    ``perfkit[asgi]``) hashes 2 KB in ~0.1 µs; it is not a cryptographic hash, which an
    ETag does not need (it names a representation; it guards nothing), and it works on
    FIPS-mode systems, where md5 fails. ``sha256``/``blake2b`` come from hashlib with
    ``usedforsecurity=False`` (allowed under FIPS) for those who want a cryptographic
    digest, at ~2-3 µs per 2 KB. Never md5, never the salted built-in ``hash()``.
    """
    function = _ETAG_FUNCTIONS.get(algorithm)
    if function is None:
        function = _ETAG_FUNCTIONS[algorithm] = etag_function(algorithm)
    return function(body)


# -- Dates (RFC 9110 §5.6.7) ---------------------------------------------------------------


def parse_http_date(value: str | None) -> float | None:
    """Seconds since the epoch of an HTTP-date (IMF-fixdate, RFC 850, asctime); else None."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # asctime and RFC 850 carry no zone: HTTP dates are GMT.
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


def format_http_date(timestamp: float) -> str:
    """IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    return formatdate(timestamp, usegmt=True)


# -- Conditional requests (RFC 9110 §13) ---------------------------------------------------


class Precondition(Enum):
    """The outcome of §13.2.2 evaluation."""

    PROCEED = "proceed"
    """Respond as if unconditional (Range, if any, may apply)."""
    IGNORE_RANGE = "ignore-range"
    """If-Range did not match: send the full 200, not a 206."""
    NOT_MODIFIED = "not-modified"
    """304 (GET/HEAD only)."""
    FAILED = "precondition-failed"
    """412."""


@dataclass(frozen=True, slots=True)
class RequestConditions:
    """The conditional header fields of one request, parsed once.

    A field sent more than once (several header lines) is kept joined for the list fields
    (lists may be split across lines) and dropped for the date fields (§13.1.3: a date field
    with several values is ignored).
    """

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: float | None = None
    if_unmodified_since: float | None = None
    if_range: str | None = None
    has_range: bool = False

    @property
    def any(self) -> bool:
        return (
            self.if_match is not None
            or self.if_none_match is not None
            or self.if_modified_since is not None
            or self.if_unmodified_since is not None
        )

    @classmethod
    def from_asgi(cls, headers: Iterable[tuple[bytes, bytes]]) -> RequestConditions:
        """Collect the fields from ASGI request headers (lower-case byte names)."""
        found: dict[bytes, list[str]] = {}
        for name, value in headers:
            if name[:3] == b"if-" or name == b"range":
                found.setdefault(name.lower(), []).append(value.decode("latin-1"))
        if not found:
            return _NO_CONDITIONS

        def joined(name: bytes) -> str | None:
            values = found.get(name)
            return ", ".join(values) if values else None

        def single_date(name: bytes) -> float | None:
            values = found.get(name)
            if not values or len(values) != 1:
                return None
            return parse_http_date(values[0])

        if_range = found.get(b"if-range")
        return cls(
            if_match=joined(b"if-match"),
            if_none_match=joined(b"if-none-match"),
            if_modified_since=single_date(b"if-modified-since"),
            if_unmodified_since=single_date(b"if-unmodified-since"),
            if_range=if_range[0] if if_range and len(if_range) == 1 else None,
            has_range=b"range" in found,
        )


_NO_CONDITIONS = RequestConditions()


def evaluate_preconditions(
    method: str,
    conditions: RequestConditions,
    etag: str | None,
    last_modified: float | None = None,
    *,
    exists: bool = True,
) -> Precondition:
    """Evaluate preconditions in the order of RFC 9110 §13.2.2.

    ``etag`` is the selected representation's current entity tag (quoted form) and
    ``last_modified`` its modification time; ``exists`` is False when there is no current
    representation. The caller evaluates only if the response without conditions would be
    2xx (§13.2.1): a 404 never becomes a 304.
    """
    current = parse_etag(etag) if etag else None
    is_get_or_head = method in ("GET", "HEAD")

    # Step 1: If-Match (strong comparison; "*" is true when a representation exists).
    if conditions.if_match is not None:
        tags, star = parse_etag_list(conditions.if_match)
        if star:
            if not exists:
                return Precondition.FAILED
        elif current is None or not any(t.strong_equals(current) for t in tags):
            return Precondition.FAILED
    # Step 2: If-Unmodified-Since, only without If-Match (an invalid date was dropped).
    elif (
        conditions.if_unmodified_since is not None
        and last_modified is not None
        and math.floor(last_modified) > conditions.if_unmodified_since
    ):
        return Precondition.FAILED

    # Step 3: If-None-Match (weak comparison; "*" is true when a representation exists).
    if conditions.if_none_match is not None:
        tags, star = parse_etag_list(conditions.if_none_match)
        matched = exists if star else (
            current is not None and any(t.weak_equals(current) for t in tags)
        )
        if matched:
            return Precondition.NOT_MODIFIED if is_get_or_head else Precondition.FAILED
    # Step 4: If-Modified-Since, only for GET/HEAD and only without If-None-Match;
    # compared at one-second resolution (HTTP dates have no fraction).
    elif (
        is_get_or_head
        and conditions.if_modified_since is not None
        and last_modified is not None
        and math.floor(last_modified) <= conditions.if_modified_since
    ):
        return Precondition.NOT_MODIFIED

    # Step 5: If-Range, only for GET with Range: a mismatch means "send everything".
    if (
        method == "GET"
        and conditions.has_range
        and conditions.if_range is not None
        and not _if_range_matches(conditions.if_range, current, last_modified)
    ):
        return Precondition.IGNORE_RANGE
    return Precondition.PROCEED


def _if_range_matches(value: str, current: ETag | None, last_modified: float | None) -> bool:
    value = value.strip()
    if value.startswith(('"', "W/")):
        tag = parse_etag(value)  # §13.1.5: strong comparison only.
        return tag is not None and current is not None and tag.strong_equals(current)
    date = parse_http_date(value)
    return date is not None and last_modified is not None and math.floor(last_modified) == date


# Representation metadata a 304 must not carry (§15.4.5; Content-Length could disagree
# with the 200's, §8.6, so it goes too). Everything else, Set-Cookie included, stays.
_DROP_ON_304 = frozenset(
    {
        b"content-type",
        b"content-encoding",
        b"content-language",
        b"content-length",
        b"content-range",
        b"content-disposition",
        b"content-md5",
        b"content-digest",
        b"repr-digest",
        b"transfer-encoding",
    }
)


def not_modified_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers of a 200 that its 304 keeps: ETag, Vary, Cache-Control, Date, ... (§15.4.5)."""
    return [(k, v) for k, v in headers if k.lower() not in _DROP_ON_304]


# -- Cache-Control (RFC 9111 §5.2) ---------------------------------------------------------


def parse_cache_control(value: str | None) -> dict[str, str | None]:
    """Directives in lower case; values unquoted; ``None`` for a directive without value.

    When a directive repeats, the first occurrence wins, except for the freshness
    directives, where the smallest (most restrictive) lifetime wins (§4.2.1).
    """
    directives: dict[str, str | None] = {}
    if not value:
        return directives
    for part in _split_list(value):
        name, sep, arg = part.partition("=")
        name = name.strip().lower()
        if not name:
            continue
        parsed: str | None = None
        if sep:
            arg = arg.strip()
            if len(arg) >= 2 and arg[0] == '"' and arg[-1] == '"':
                arg = arg[1:-1].replace('\\"', '"')
            parsed = arg
        if name in directives:
            if name in ("max-age", "s-maxage"):
                old, new = _delta_seconds(directives[name]), _delta_seconds(parsed)
                if new < old:
                    directives[name] = parsed
            continue
        directives[name] = parsed
    return directives


def _split_list(value: str) -> list[str]:
    """Split a comma list, respecting quoted strings (``private="a, b"``)."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts if p.strip()]


_MAX_DELTA = 2_147_483_648  # §1.2.2: larger values are treated as this.


def _delta_seconds(value: str | None) -> int:
    if value is None or not value.isdigit():
        return 0  # §4.2.1: invalid freshness information means stale.
    return min(int(value), _MAX_DELTA)


def cache_control_seconds(directives: Mapping[str, str | None], name: str) -> int | None:
    """The delta-seconds of ``name`` (e.g. ``max-age``); None if absent, 0 if invalid."""
    if name not in directives:
        return None
    return _delta_seconds(directives[name])


def format_cache_control(directives: Mapping[str, str | int | bool | None]) -> str:
    """Render directives; ``True``/``None`` mean a bare directive, ``False`` drops it."""
    parts: list[str] = []
    for name, value in directives.items():
        name = name.replace("_", "-").lower()
        if value is False:
            continue
        if value is True or value is None:
            parts.append(name)
        else:
            text = str(value)
            needs_quotes = any(c in text for c in ' ,;="')
            parts.append(f'{name}="{text}"' if needs_quotes else f"{name}={text}")
    return ", ".join(parts)


# -- Vary (RFC 9110 §12.5.5) --------------------------------------------------------------


def parse_vary(value: str | None) -> list[str]:
    """Field names in lower case, deduplicated, in order; ``["*"]`` if ``*`` is present."""
    names: list[str] = []
    if not value:
        return names
    for part in value.split(","):
        name = part.strip().lower()
        if not name:
            continue
        if name == "*":
            return ["*"]
        if name not in names:
            names.append(name)
    return names


def merge_vary(existing: str | None, *names: str) -> str:
    """Add ``names`` to a Vary value case-insensitively, without duplicates; ``*`` absorbs."""
    current = [p.strip() for p in existing.split(",") if p.strip()] if existing else []
    seen = {p.lower() for p in current}
    if "*" in seen:
        return "*"
    for name in names:
        if name == "*":
            return "*"
        if name.lower() not in seen:
            seen.add(name.lower())
            current.append(name)
    return ", ".join(current)


# -- Accept-Encoding (RFC 9110 §12.5.3) ----------------------------------------------------


def parse_accept_encoding(value: str) -> dict[str, float]:
    """Coding (lower case) to q-value; malformed members are skipped; q clamped to [0, 1]."""
    result: dict[str, float] = {}
    for part in value.split(","):
        coding, *params = part.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        q = 1.0
        valid = True
        for param in params:
            key, _, arg = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(arg.strip())
                except ValueError:
                    valid = False
                if not valid or math.isnan(q) or not 0.0 <= q <= 1.0:
                    valid = False
        if valid and coding not in result:
            result[coding] = q
    return result


def acceptable_codings(value: str | None, available: Sequence[str]) -> list[str]:
    """The codings of ``available`` (plus ``identity``) the client accepts, best first.

    ``q=0`` means not acceptable; ``*`` covers codings not listed; ``identity`` is
    acceptable unless ``identity;q=0`` (or ``*;q=0`` without an identity entry). A missing
    header accepts anything, but we answer it with identity (no coding is asked for). Ties
    are broken by the order of ``available`` (the server's preference); an unlisted
    identity ranks below every accepted coding, and identity loses ties.
    """
    if value is None:
        return ["identity"]
    prefs = parse_accept_encoding(value)
    star = prefs.get("*")
    scored: list[tuple[float, int, str]] = []
    for rank, coding in enumerate(available):
        q = prefs.get(coding, star if star is not None else 0.0)
        if coding == "gzip" and "gzip" not in prefs and "x-gzip" in prefs:
            q = prefs["x-gzip"]
        if q > 0:
            scored.append((q, rank, coding))
    # An unlisted identity is acceptable but least preferred: any accepted coding wins.
    identity_q = prefs.get("identity", star if star is not None else 1e-9)
    if identity_q > 0:
        scored.append((identity_q, len(available), "identity"))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [coding for _, _, coding in scored]


def negotiate_encoding(value: str | None, available: Sequence[str]) -> str | None:
    """The coding to send: one of ``available``, ``"identity"``, or None if nothing fits."""
    codings = acceptable_codings(value, available)
    return codings[0] if codings else None


def accept_encoding_key(value: str | None, available: Sequence[str]) -> str:
    """A normalised form of Accept-Encoding for cache keys: the acceptable codings, sorted.

    Thousands of distinct header strings map onto a handful of keys, and two headers that
    accept the same codings share cache entries.
    """
    if value is None:
        return "<absent>"
    return ",".join(sorted(acceptable_codings(value, available)))


# -- Storing responses (RFC 9111, as a shared cache) ---------------------------------------


class StoreReason(str, Enum):
    """Why a request bypassed the cache or a response was not stored (labels, logs)."""

    METHOD = "method"
    AUTHORIZATION = "authorization"
    COOKIE = "cookie"
    REQUEST_NO_STORE = "request-no-store"
    NO_STORE = "no-store"
    PRIVATE = "private"
    NO_CACHE = "no-cache"
    SET_COOKIE = "set-cookie"
    VARY_STAR = "vary-star"
    VARY_TOO_LONG = "vary-too-long"
    STATUS = "status"
    PARTIAL = "partial"
    STREAMING = "streaming"
    TOO_LARGE = "too-large"
    NOT_FRESH = "not-fresh"
    HOST = "host"
    BACKEND_ERROR = "backend-error"
    TOO_MANY_TAGS = "too-many-tags"

    def __str__(self) -> str:
        return self.value


def request_bypass_reason(
    method: str,
    *,
    has_authorization: bool,
    has_cookie: bool,
    request_cache_control: str | None,
    principal_keyed: bool = False,
) -> StoreReason | None:
    """Why this request must not be answered from, or stored in, a shared cache; or None.

    Authorization and Cookie bypass unless the caller keys entries by principal (§3.5 lets a
    response marked ``public``/``s-maxage``/``must-revalidate`` through: that is checked on
    the response by :func:`response_store_reason`). A request ``no-cache``/``Pragma`` does
    not bypass: letting any client force recomputation is a denial-of-service lever.
    """
    if method not in ("GET", "HEAD"):
        return StoreReason.METHOD
    if has_cookie and not principal_keyed:
        return StoreReason.COOKIE
    if request_cache_control and "no-store" in parse_cache_control(request_cache_control):
        return StoreReason.REQUEST_NO_STORE
    if has_authorization and not principal_keyed:
        return StoreReason.AUTHORIZATION
    return None


DEFAULT_CACHEABLE_STATUSES = frozenset({200, 203, 204, 300, 301, 308})


def response_store_reason(
    status: int,
    cache_control: Mapping[str, str | None],
    *,
    vary: Sequence[str],
    has_set_cookie: bool,
    request_has_authorization: bool = False,
    cacheable_statuses: frozenset[int] = DEFAULT_CACHEABLE_STATUSES,
) -> StoreReason | None:
    """Why a shared cache must not store this response (RFC 9111 §3); None if it may."""
    if status == 206:
        return StoreReason.PARTIAL
    if status not in cacheable_statuses:
        return StoreReason.STATUS
    if "no-store" in cache_control:
        return StoreReason.NO_STORE
    if "private" in cache_control:
        return StoreReason.PRIVATE
    if "no-cache" in cache_control:
        return StoreReason.NO_CACHE  # would need revalidation on every use: not stored.
    if "*" in vary:
        return StoreReason.VARY_STAR
    if has_set_cookie:
        return StoreReason.SET_COOKIE
    if request_has_authorization and not (
        "public" in cache_control or "s-maxage" in cache_control
        or "must-revalidate" in cache_control
    ):
        return StoreReason.AUTHORIZATION
    return None


def freshness_lifetime(
    cache_control: Mapping[str, str | None],
    *,
    expires: str | None = None,
    date: str | None = None,
    default: float | None = None,
    now: float,
) -> float | None:
    """Seconds the response stays fresh in a shared cache; None if not explicitly fresh.

    Precedence (§4.2.1, §5.2.2.10): ``s-maxage`` > ``max-age`` > ``Expires`` (relative to
    ``Date``, else to ``now``) > ``default``. An invalid Expires means "already expired".
    """
    s_maxage = cache_control_seconds(cache_control, "s-maxage")
    if s_maxage is not None:
        return float(s_maxage)
    max_age = cache_control_seconds(cache_control, "max-age")
    if max_age is not None:
        return float(max_age)
    if expires is not None:
        expires_at = parse_http_date(expires)
        if expires_at is None:
            return 0.0
        base = parse_http_date(date) if date else None
        return max(0.0, expires_at - (base if base is not None else now))
    return default
