"""Shared fixtures: real services, and the rule that turns a missing one into a failure.

Tests that need Redis or PostgreSQL ask for ``redis_url`` / ``postgres_url``. On a laptop
without those servers the tests skip with the reason; with ``PERFKIT_REQUIRE_SERVICES=1``
(set by ``.ci/run``) a missing server fails the test instead, so CI can never pass by
skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

REQUIRE_SERVICES = os.environ.get("PERFKIT_REQUIRE_SERVICES", "") == "1"
REDIS_URL = os.environ.get("PERFKIT_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "PERFKIT_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def service_missing(what: str, why: str) -> None:
    """Skip (laptop) or fail (CI) a test whose service is not there."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} is required (PERFKIT_REQUIRE_SERVICES=1) but unavailable: {why}")
    pytest.skip(f"{what} unavailable: {why} (start it, or set PERFKIT_REQUIRE_SERVICES=1 in CI)")


def _redis_error(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'perfkit[redis]')"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        return f"{url}: {exc!r}"
    return None


def _postgres_error(url: str) -> str | None:
    try:
        import sqlalchemy as sa
    except ImportError:
        return "sqlalchemy is not installed (pip install 'perfkit[sql]')"
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:
        return f"{url}: {exc!r}"
    return None


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a running Redis (``PERFKIT_REDIS_URL``, default 127.0.0.1:6379/0)."""
    error = _redis_error(REDIS_URL)
    if error:
        service_missing("Redis", error)
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of a running PostgreSQL (``PERFKIT_POSTGRES_URL``)."""
    error = _postgres_error(POSTGRES_URL)
    if error:
        service_missing("PostgreSQL", error)
    return POSTGRES_URL


@pytest.fixture
def unique_ns() -> str:
    """A namespace no other test (or earlier run) uses, so shared Redis is never flushed."""
    return f"test-{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` owned by one test, on its own loopback port, to kill and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if _redis_error(self.url) is None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server, started; the test may ``stop()`` and ``start()`` it."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server binary", "not on PATH")
    try:
        import redis  # noqa: F401
    except ImportError:
        service_missing("redis-py", "not installed (pip install 'perfkit[redis]')")
    server = RedisServer(binary)  # type: ignore[arg-type]
    server.start()
    try:
        yield server
    finally:
        server.stop()


PLUGIN_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
{extra}
"""


@pytest.fixture
def inner_ini(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """The pytester of a test that runs inner pytest sessions, with the plugin tests' ini.

    pytest prints whole failure messages in its short summary when ``CI`` or
    ``BUILD_NUMBER`` is set; the inner session's output must not depend on where the
    outer one runs, so both are cleared.
    """
    pytester: pytest.Pytester = request.getfixturevalue("pytester")
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    pytester.makeini(PLUGIN_INI.format(extra=""))
    return pytester


@pytest.fixture
def run(inner_ini: pytest.Pytester):
    """Run an inner session in-process; ``ini`` lines go to the inner pytest.ini."""

    def runner(source: str, *args: str, ini: str = "") -> pytest.RunResult:
        inner_ini.makeini(PLUGIN_INI.format(extra=ini))
        inner_ini.makepyfile(test_inner=source)
        return inner_ini.runpytest_inprocess(
            "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
            "-W", "ignore::DeprecationWarning", *args,
        )

    return runner
