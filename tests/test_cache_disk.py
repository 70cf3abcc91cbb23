"""The disk tier (two real processes, signing, bounds) and the three-tier TieredBackend."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import sqlite3
import stat
import threading
import time

import pytest

from perfkit import DiskBackend, MemoryBackend, RedisBackend, TieredBackend, cached
from perfkit.caching.backends.base import MISSING, BackendError

# -- two processes on one directory -------------------------------------------------------


def _disk_worker(path, log, barrier, results, offset):
    backend = DiskBackend(path, max_bytes=200_000)

    @cached(ttl=60, backend=backend, namespace="shared-expensive")
    def expensive(x):
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(0.3)
        return x * 2

    @cached(ttl=60, backend=backend, namespace="shared-bulk")
    def bulk(i):
        return "v" * 1000 + str(i)

    out = []

    def call():
        out.append(expensive(21))

    barrier.wait()
    threads = [threading.Thread(target=call) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    barrier.wait()
    for i in range(offset, offset + 400):  # both at once, far past max_bytes
        bulk(i)
    results.put((out, bulk(offset + 399), backend.bad_signatures))


def test_two_processes_share_entries_compute_once_and_respect_the_byte_bound(tmp_path):
    path, log = tmp_path / "cache", tmp_path / "computations.log"
    DiskBackend(path)  # create it once, so both children find the secret in place
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_disk_worker, args=(path, log, barrier, results, offset))
        for offset in (0, 200)  # overlapping key ranges: both write keys 200..399
    ]
    for p in procs:
        p.start()
    outputs = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert [o[0] for o in outputs] == [[42] * 20, [42] * 20]
    assert log.read_text().count("computed") == 1  # one computation across two processes
    assert sorted(o[1][-3:] for o in outputs) == ["399", "599"]
    assert [o[2] for o in outputs] == [0, 0]
    db = sqlite3.connect(path / "cache.sqlite3")
    total = db.execute("SELECT bytes FROM totals").fetchone()[0]
    assert total == db.execute("SELECT SUM(size) FROM entries").fetchone()[0]
    assert 150_000 < total <= 200_000
    # what the two processes left is read by a third without computing
    reader = DiskBackend(path)
    calls = []

    @cached(ttl=60, backend=reader, namespace="shared-bulk")
    def bulk(i):
        calls.append(i)
        return "recomputed"

    served = [bulk(i) for i in range(600) if reader.get(bulk.cache_key(i)) is not MISSING]
    assert len(served) > 50 and calls == []
    assert all(v.startswith("v" * 1000) for v in served)


# -- signing and the secret ----------------------------------------------------------------

_exploded: list[str] = []


class _Exploit:
    def __reduce__(self):
        return (_exploded.append, ("unpickled!",))


def test_secret_file_is_private(tmp_path):
    DiskBackend(tmp_path / "c")
    mode = stat.S_IMODE(os.stat(tmp_path / "c" / "secret.key").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "c").st_mode) == 0o700
    os.chmod(tmp_path / "c" / "secret.key", 0o644)
    with pytest.raises(PermissionError, match="readable or writable by others"):
        DiskBackend(tmp_path / "c")


def test_tampered_rows_are_never_unpickled(tmp_path):
    backend = DiskBackend(tmp_path / "c")
    key = ("ns", "i", 1)
    backend.set(key, "honest", None)
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite3")
    (blob,) = db.execute("SELECT value FROM entries").fetchone()
    forged = blob[:32] + pickle.dumps(_Exploit())  # a valid signature, other data
    db.execute("UPDATE entries SET value = ?", (forged,))
    db.commit()
    assert backend.get(key) is MISSING
    assert _exploded == [] and backend.bad_signatures == 1
    assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0  # dropped


def test_a_value_replayed_under_another_key_is_rejected(tmp_path):
    backend = DiskBackend(tmp_path / "c")
    backend.set(("ns", "i", 1), "for key 1", None)
    backend.set(("ns", "i", 2), "for key 2", None)
    db = sqlite3.connect(tmp_path / "c" / "cache.sqlite3")
    rows = dict(db.execute("SELECT k, value FROM entries").fetchall())
    k1, k2 = sorted(rows)
    db.execute("UPDATE entries SET value = ? WHERE k = ?", (rows[k1], k2))
    db.commit()
    got = {backend.get(("ns", "i", 1)), backend.get(("ns", "i", 2))}
    assert MISSING in got and backend.bad_signatures == 1


def test_another_directory_cannot_read_this_one(tmp_path):
    a = DiskBackend(tmp_path / "a")
    a.set(("ns", "i", 1), "secret", None)
    (tmp_path / "b").mkdir(mode=0o700)
    with sqlite3.connect(tmp_path / "b" / "cache.sqlite3") as copy:
        sqlite3.connect(tmp_path / "a" / "cache.sqlite3").backup(copy)
    b = DiskBackend(tmp_path / "b")  # its own, different secret
    assert b.get(("ns", "i", 1)) is MISSING and b.bad_signatures == 1


def test_a_deleted_and_recreated_directory_is_followed(tmp_path):
    """A cleaner deletes the directory; another process recreates it with a new secret.
    This process must follow: no stale reads from the deleted file, writes the others
    see, and no deleting their rows as 'bad signatures' with its old secret."""
    import shutil

    path = tmp_path / "c"
    first = DiskBackend(path)
    first.set(("ns", "i", 1), "old", None)
    shutil.rmtree(path)
    second = DiskBackend(path)  # stands for another process: new directory, new secret
    second.set(("ns", "i", 1), "new", None)
    assert first.get(("ns", "i", 1)) == "new"  # not "old" from the unlinked file
    first.set(("ns", "i", 2), "from first", None)
    assert second.get(("ns", "i", 2)) == "from first"
    seen = []
    reader = threading.Thread(target=lambda: seen.append(first.get(("ns", "i", 1))))
    reader.start()
    reader.join()
    assert seen == ["new"] and first.bad_signatures == 0
    assert second.get(("ns", "i", 1)) == "new" and second.bad_signatures == 0


def test_a_deleted_directory_is_recreated_on_next_use(tmp_path):
    import shutil

    path = tmp_path / "c"
    backend = DiskBackend(path)
    calls = []

    @cached(ttl=60, backend=backend, namespace="gone")
    def f(x):
        calls.append(x)
        return x

    assert f(1) == 1
    shutil.rmtree(path)
    assert [f(1), f(1)] == [1, 1] and calls == [1, 1]  # recomputed once, then cached again
    assert f.cache_stats().backend_errors == 0
    assert stat.S_IMODE(os.stat(path / "secret.key").st_mode) == 0o600


# -- bounds, time, failure -----------------------------------------------------------------


def test_lru_eviction_by_bytes_keeps_recently_read_entries(tmp_path):
    now = [1000.0]
    backend = DiskBackend(tmp_path / "c", max_bytes=3000, timer=lambda: now[0],
                          touch_interval=0)
    for name in "abc":
        backend.set(("ns", "s", name), name * 900, None)
        now[0] += 1
    assert backend.get(("ns", "s", "a")) == "a" * 900  # a is now the most recent
    now[0] += 1
    backend.set(("ns", "s", "d"), "d" * 900, None)
    assert backend.get(("ns", "s", "b")) is MISSING
    assert backend.get(("ns", "s", "a")) is not MISSING
    assert backend.currsize_bytes <= 3000 and backend.evictions == 1
    backend.set(("ns", "s", "huge"), "x" * 5000, None)
    assert backend.rejected == 1 and backend.get(("ns", "s", "huge")) is MISSING


def test_ttl_uses_the_injected_clock_and_reports_remaining(tmp_path):
    now = [1000.0]
    backend = DiskBackend(tmp_path / "c", timer=lambda: now[0])
    backend.set(("ns", "i", 1), "v", 10)
    assert backend.get_with_ttl(("ns", "i", 1)) == ("v", 10)
    now[0] += 10
    assert backend.get(("ns", "i", 1)) is MISSING
    assert backend.count_namespace("ns") == 0


def test_a_locked_database_degrades_to_computing(tmp_path):
    backend = DiskBackend(tmp_path / "c", busy_timeout=0.05)
    calls = []

    @cached(ttl=60, backend=backend, namespace="locked")
    def f(x):
        calls.append(x)
        return x

    blocker = sqlite3.connect(tmp_path / "c" / "cache.sqlite3", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock for long
    try:
        with pytest.raises(BackendError, match="locked"):
            backend.set(("ns", "i", 1), 1, None)
        assert [f(1), f(1)] == [1, 1]  # computed without the cache, no exception
        assert f.cache_stats().backend_errors >= 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert f(2) == 2 and f(2) == 2 and calls.count(2) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        DiskBackend(tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="path"):
        DiskBackend(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pickled"):
        DiskBackend(tmp_path / "c").set(("ns", "i", 1), threading.Lock(), None)


# -- three tiers: memory, disk, Redis -------------------------------------------------------


@pytest.fixture
def three(redis_url, unique_ns, tmp_path):
    made = []

    def make(host="host-a", l1=None, **kw):
        tiered = TieredBackend(MemoryBackend(100) if l1 is None else l1,
                               DiskBackend(tmp_path / host),
                               RedisBackend(redis_url), **kw)
        made.append(tiered)
        return tiered

    yield make
    for tiered in made:
        tiered.l3.clear_namespace(unique_ns)
        tiered.close()


def test_lower_tier_hits_fill_the_upper_tiers(three, unique_ns):
    key = (unique_ns, "i", 1)
    three().set(key, "v", 60)
    other_process = three()  # same host (disk), its own memory
    assert other_process.l1.get(key) is MISSING
    assert other_process.get(key) == "v"  # from disk
    assert other_process.l1.get(key) == "v"
    other_host = three(host="host-b")  # nothing on its disk: from Redis
    assert other_host.l2.get(key) is MISSING
    assert other_host.get(key) == "v"
    assert other_host.l2.get(key) == "v" and other_host.l1.get(key) == "v"
    remaining = other_host.l2.get_with_ttl(key)[1]
    assert remaining is not None and 0 < remaining <= 60  # promoted with its remaining ttl


def test_promote_after_n_reads(three, unique_ns):
    key = (unique_ns, "i", 1)
    three().set(key, "v", 60)
    reader = three(promote_after=3)
    assert [reader.get(key) for _ in range(2)] == ["v", "v"]
    assert reader.l1.get(key) is MISSING  # two reads from below: not promoted yet
    assert reader.get(key) == "v"
    assert reader.l1.get(key) == "v"


def test_memory_evictions_are_demoted_to_disk(three, unique_ns):
    tiered = three(l1=MemoryBackend(2), l2_writes="on_evict")
    keys = [(unique_ns, "i", i) for i in range(3)]
    for i, key in enumerate(keys):
        tiered.set(key, i, 60)
    assert tiered.l2.get(keys[0]) == 0  # evicted from memory, kept on disk
    assert tiered.l2.get(keys[2]) is MISSING  # still in memory: no disk write yet
    assert [tiered.l3.get(k) for k in keys] == [0, 1, 2]  # Redis has every write
    tiered.l1.clear()
    assert tiered.get(keys[0]) == 0


def test_invalidation_reaches_every_tier_and_other_hosts(three, unique_ns):
    here, there = three(), three(host="host-b")
    for t in (here, there):
        assert t._listener is not None and t._listener.subscribed.wait(5)

    @cached(ttl=60, backend=here, namespace=unique_ns)
    def f(x):
        return x

    f(1)
    key = f.cache_key(1)
    assert there.get(key) == 1  # now in there's memory and disk too
    assert f.cache_invalidate(1) is True
    assert here.l1.get(key) is MISSING and here.l2.get(key) is MISSING
    assert here.l3.get(key) is MISSING
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        there.l1.get(key) is not MISSING or there.l2.get(key) is not MISSING
    ):
        time.sleep(0.02)
    assert there.l1.get(key) is MISSING and there.l2.get(key) is MISSING


def test_promotion_from_redis_fills_the_disk_in_on_evict_mode(three, unique_ns):
    key = (unique_ns, "i", 1)
    three(host="writer").set(key, "v", 60)
    reader = three(l2_writes="on_evict")
    assert reader.get(key) == "v"  # from Redis
    assert reader.l1.get(key) == "v" and reader.l2.get(key) == "v"  # as documented


def test_a_lost_subscription_also_drops_this_hosts_disk_tier(redis_server, tmp_path, unique_ns):
    """While the listener was disconnected it may have missed invalidations: memory *and*
    this host's disk must be dropped, or the disk serves a deleted entry for its whole TTL."""
    import redis

    tiered = TieredBackend(MemoryBackend(100), DiskBackend(tmp_path / "d"),
                           RedisBackend(redis_server.url))
    try:
        assert tiered._listener is not None and tiered._listener.subscribed.wait(5)
        key = (unique_ns, "i", 1)
        tiered.set(key, "v", 600)
        client = redis.Redis.from_url(redis_server.url)
        assert client.client_kill_filter(_type="pubsub") >= 1
        client.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and tiered.l2.get(key) is not MISSING:
            time.sleep(0.02)
        assert tiered.l2.get(key) is MISSING and tiered.l1.get(key) is MISSING
        assert tiered.get(key) == "v"  # still in Redis: refilled from there
    finally:
        tiered.close()


def test_disk_keeps_serving_when_redis_is_down(redis_server, tmp_path, unique_ns):
    tiered = TieredBackend(MemoryBackend(100), DiskBackend(tmp_path / "d"),
                           RedisBackend(redis_server.url, retry_interval=0.2), listen=False)
    calls = []

    @cached(ttl=60, backend=tiered, namespace=unique_ns)
    def f(x):
        calls.append(x)
        return x

    f(1)
    redis_server.stop()
    tiered.l1.clear()
    assert f(1) == 1 and calls == [1]  # from disk: no recomputation
    assert f(2) == 2 and f(2) == 2 and calls == [1, 2]
    assert tiered.l2.get(f.cache_key(2)) == 2  # the write reached disk despite Redis
    assert f.cache_stats().backend_errors > 0
    tiered.close()


def test_three_tier_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="promote_after"):
        TieredBackend(MemoryBackend(), DiskBackend(tmp_path), promote_after=0)
    with pytest.raises(ValueError, match="on_evict"):
        TieredBackend(MemoryBackend(), DiskBackend(tmp_path), l2_writes="on_evict")
    with pytest.raises(TypeError, match="l3"):
        TieredBackend(MemoryBackend(), DiskBackend(tmp_path), "redis://x")  # type: ignore[arg-type]


def _open_files(directory):
    import psutil

    return [f.path for f in psutil.Process().open_files() if f.path.startswith(str(directory))]


async def test_close_closes_every_threads_connection_and_a_later_call_reopens(tmp_path):
    backend = DiskBackend(tmp_path / "cache")
    # async calls run in asyncio.to_thread's workers, each with its own connection
    import asyncio

    await asyncio.gather(*(backend.aset(("ns", f"k{i}"), i, None) for i in range(8)))
    assert await backend.aget(("ns", "k3")) == 3
    assert _open_files(tmp_path) != []
    backend.close()
    assert _open_files(tmp_path) == []
    assert backend.get(("ns", "k5")) == 5  # reopens on use
    assert await backend.aget(("ns", "k6")) == 6  # and so do the worker threads
    backend.close()
    assert _open_files(tmp_path) == []


def test_a_finished_threads_connection_is_closed_when_another_opens(tmp_path):
    backend = DiskBackend(tmp_path / "cache")
    backend.close()
    used = []

    def work():
        backend.set(("ns", "k"), 1, None)
        used.append(backend._local.db)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    used[0].execute("SELECT 1")  # still open: nothing has noticed its thread ended
    assert backend.get(("ns", "k")) == 1  # this thread connects, and closes the dead one's
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        used[0].execute("SELECT 1")
    backend.close()
    assert _open_files(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_closes_the_parents_connections(tmp_path):
    # SQLite: a connection carried across fork() must not be used, nor closed, in the child.
    backend = DiskBackend(tmp_path / "cache")
    parents = []

    def work():
        backend.set(("ns", "w"), 1, None)
        parents.append(backend._local.db)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    backend.set(("ns", "k"), 1, None)
    parents.append(backend._local.db)
    pid = os.fork()
    if pid == 0:  # the child: connect, then close, and report what became of the parent's
        code = 0
        try:
            assert backend.get(("ns", "k")) == 1
            backend.close()
            for db in parents:
                try:
                    db.total_changes  # noqa: B018 (raises once closed)
                except sqlite3.ProgrammingError:
                    code = 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert backend.get(("ns", "w")) == 1
    backend.close()
