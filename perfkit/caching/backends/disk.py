"""A local-disk cache tier on SQLite: shared by every process on one host, bounded in bytes.

Why SQLite and not diskcache: SQLite ships with Python, its WAL mode gives many readers
and one writer across processes with real transactions, and it lets this module own the
one thing a disk cache must get right: **it never unpickles bytes it did not sign.**
diskcache unpickles whatever is in its directory.

- Layout: ``path/`` (created ``0700``) holds ``cache.sqlite3`` and ``secret.key``, a
  32-byte random key created once with ``0600`` permissions and refused if anyone but its
  owner can read or write it. Every value is stored as ``HMAC-SHA256(key string + data)``
  followed by the pickled data; a row whose signature does not verify is deleted, counted
  in ``bad_signatures`` and read as a miss. Binding the key string into the MAC stops a
  valid value being replayed under another key.
- Bounds: ``max_bytes`` over the stored payloads, kept as a running total by triggers in
  the same transaction as each write, so several processes agree on it. A write evicts
  the least recently read rows (reads refresh their timestamp at most once per
  ``touch_interval``) until the total fits; a value larger than ``max_bytes`` is not
  stored and counted in ``rejected``.
- Time: deadlines are wall-clock seconds (``timer``, injectable), because processes
  share them; expired rows are dropped on read and on write.
- Failures (a locked or broken database) raise :class:`BackendError`; the decorator counts
  them and computes without the cache.
- Async methods run in a worker thread: SQLite calls block.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import pickle
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perfkit.caching.backends.base import MISSING, Backend, BackendError, Key
from perfkit.caching.keys import shared_key

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    k TEXT PRIMARY KEY,
    ns TEXT NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    expires REAL,
    accessed REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_ns ON entries (ns);
CREATE INDEX IF NOT EXISTS entries_accessed ON entries (accessed);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER);
INSERT OR IGNORE INTO totals VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE totals SET bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 0;
END;
CREATE TABLE IF NOT EXISTS locks (k TEXT PRIMARY KEY, token TEXT NOT NULL, expires REAL);
"""

_SIGNATURE = 32
_EVICT_BATCH = 64


class DiskBackend(Backend):
    """SQLite-backed cache in ``path``, at most ``max_bytes`` of payload. See module doc."""

    is_local = False  # shared with other processes, and its calls do I/O

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1024 * 1024 * 1024,
        timer: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
        touch_interval: float = 1.0,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a directory path, got {path!r}")
        for name, value in (("busy_timeout", busy_timeout), ("touch_interval", touch_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.timer = timer
        self.busy_timeout = busy_timeout
        self.touch_interval = touch_interval
        self.bad_signatures = 0
        self.rejected = 0
        self._evictions = 0
        self._local = threading.local()
        # Every thread's connection with its thread and process, for close(); a dead
        # thread's is closed when the next one opens. One inherited across fork() is only
        # forgotten: SQLite forbids using or closing it in the child.
        self._connections: list[tuple[threading.Thread, int, sqlite3.Connection]] = []
        self._connections_lock = threading.Lock()
        self._file = self.path / "cache.sqlite3"
        self._open_lock = threading.Lock()
        self._generation = 0  # bumped when the directory was replaced: threads reconnect
        self._identity: tuple[int, int] | None = None
        self._secret = b""
        self._secret_identity: tuple[int, int] | None = None
        self._open()

    # -- the directory: created on first use, followed if it is deleted or replaced --------
    def _open(self) -> None:
        """Create (or adopt) the directory, its secret and its schema; remember the database
        file's identity so a replaced directory is noticed. PermissionError (an unsafe
        secret) propagates: the constructor refuses to start on it."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._load_secret()
        db = self._connect()
        try:
            db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
            info = os.stat(self._file)
        except (sqlite3.Error, OSError) as exc:
            db.close()
            raise BackendError(f"disk cache at {self.path}: {exc}") from exc
        self._identity = (info.st_dev, info.st_ino)
        self._generation += 1
        self._local.db, self._local.pid, self._local.generation = (
            db, os.getpid(), self._generation)

    def _load_secret(self) -> None:
        secret_path = self.path / "secret.key"
        self._secret = _load_secret(secret_path)
        info = secret_path.stat()
        self._secret_identity = (info.st_dev, info.st_ino)

    def _secret_replaced(self) -> bool:
        """After a signature failed: was ``secret.key`` replaced (then reload it)?"""
        try:
            info = (self.path / "secret.key").stat()
        except OSError:
            return False
        if (info.st_dev, info.st_ino) == self._secret_identity:
            return False
        with self._open_lock:
            try:
                self._load_secret()
            except (OSError, PermissionError):
                return False
        return True

    def _follow(self) -> None:
        """Reopen if the database file is gone or is another file than the one we opened
        (a cleaner deleted the directory; another process recreated it)."""
        try:
            info = os.stat(self._file)
            current: tuple[int, int] | None = (info.st_dev, info.st_ino)
        except FileNotFoundError:
            current = None
        except OSError as exc:
            raise BackendError(f"disk cache at {self.path}: {exc}") from exc
        if current == self._identity:
            return
        with self._open_lock:
            try:
                info = os.stat(self._file)
                if (info.st_dev, info.st_ino) == self._identity:
                    return  # another thread reopened it meanwhile
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise BackendError(f"disk cache at {self.path}: {exc}") from exc
            old = getattr(self._local, "db", None)
            if old is not None:
                old.close()
                self._local.db = None
            try:
                self._open()
            except PermissionError as exc:
                raise BackendError(f"disk cache at {self.path}: {exc}") from exc

    # -- connections and transactions ---------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            # Used only by the thread that opened it; check_same_thread=False so that
            # close() can close every thread's connection (asyncio.to_thread's workers').
            db = sqlite3.connect(
                self._file, timeout=self.busy_timeout, isolation_level=None,
                check_same_thread=False,
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise BackendError(f"disk cache at {self.path}: {exc}") from exc
        pid, current = os.getpid(), threading.current_thread()
        with self._connections_lock:
            ours = [(t, p, c) for t, p, c in self._connections if p == pid]
            # This thread's previous connection is replaced (closed already, or now).
            keep = [(t, p, c) for t, p, c in ours if t.is_alive() and t is not current]
            ended = [c for t, p, c in ours if not t.is_alive() or t is current]
            self._connections = [*keep, (current, pid, db)]
        for old in ended:
            old.close()
        return db

    def _db(self) -> sqlite3.Connection:
        self._follow()  # one stat(): a few µs against the tens a transaction costs
        local = self._local
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is None or local.pid != os.getpid() or local.generation != self._generation:
            if db is not None and local.pid == os.getpid():
                db.close()  # opened on a file that was replaced
            db = self._connect()  # never reuse a connection across fork
            local.db, local.pid, local.generation = db, os.getpid(), self._generation
        return db

    def _tx(self, write: bool = True) -> _Transaction:
        return _Transaction(self, write)

    # -- payloads ----------------------------------------------------------------------
    def _sign(self, skey: str, data: bytes) -> bytes:
        return hmac.new(self._secret, skey.encode() + b"\0" + data, hashlib.sha256).digest()

    def dumps(self, skey: str, value: Any) -> bytes:
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise TypeError(f"value cannot be pickled for the disk cache: {exc}") from exc
        return self._sign(skey, data) + data

    def _loads(self, skey: str, blob: bytes) -> Any:
        signature, data = blob[:_SIGNATURE], blob[_SIGNATURE:]
        # A failed check may mean secret.key was replaced: reload it and check again once.
        if not hmac.compare_digest(signature, self._sign(skey, data)) and not (
            self._secret_replaced() and hmac.compare_digest(signature, self._sign(skey, data))
        ):
            return MISSING
        return pickle.loads(data)

    # -- reads -------------------------------------------------------------------------
    def get(self, key: Key) -> Any:
        return self.get_with_ttl(key)[0]

    def get_with_ttl(self, key: Key) -> tuple[Any, float | None]:
        """The value and its remaining lifetime in seconds (``None``: no expiry)."""
        skey = shared_key(key, "")
        now = self.timer()
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT value, expires, accessed FROM entries WHERE k = ?", (skey,)
            ).fetchone()
        if row is None:
            return MISSING, None
        blob, expires, accessed = row
        if expires is not None and expires <= now:
            self._delete_row(skey, blob)
            return MISSING, None
        try:
            value = self._loads(skey, blob)
        except Exception:  # signed by us, but no longer loads (e.g. its class is gone)
            value = MISSING
        else:
            if value is MISSING:
                self.bad_signatures += 1
        if value is MISSING:
            self._delete_row(skey, blob)
            return MISSING, None
        if now - accessed >= self.touch_interval:
            with self._tx() as db:
                db.execute("UPDATE entries SET accessed = ? WHERE k = ?", (now, skey))
        return value, None if expires is None else expires - now

    def _delete_row(self, skey: str, blob: bytes) -> None:
        with self._tx() as db:  # only the row we judged: another process may have replaced it
            db.execute("DELETE FROM entries WHERE k = ? AND value = ?", (skey, blob))

    # -- writes ------------------------------------------------------------------------
    def set(self, key: Key, value: Any, ttl: float | None) -> None:
        skey = shared_key(key, "")
        blob = self.dumps(skey, value)
        self._put(skey, str(key[0]), blob, ttl, replace=True)

    def add(self, key: Key, value: Any, ttl: float | None) -> bool:
        """Store unless a live entry exists (what a demoted memory entry uses)."""
        skey = shared_key(key, "")
        return self._put(skey, str(key[0]), self.dumps(skey, value), ttl, replace=False)

    def _put(self, skey: str, ns: str, blob: bytes, ttl: float | None, replace: bool) -> bool:
        size = len(blob)
        now = self.timer()
        expires = None if ttl is None else now + ttl
        with self._tx() as db:
            if size > self.max_bytes:
                db.execute("DELETE FROM entries WHERE k = ?", (skey,))
                self.rejected += 1
                return False
            if not replace:
                row = db.execute(
                    "SELECT expires FROM entries WHERE k = ?", (skey,)
                ).fetchone()
                if row is not None and (row[0] is None or row[0] > now):
                    return False
            db.execute(
                "INSERT INTO entries (k, ns, value, size, expires, accessed) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (k) DO UPDATE SET ns = excluded.ns, "
                "value = excluded.value, size = excluded.size, expires = excluded.expires, "
                "accessed = excluded.accessed",
                (skey, ns, blob, size, expires, now),
            )
            self._evict(db, now)
        return True

    def _evict(self, db: sqlite3.Connection, now: float) -> None:
        """Within the write's transaction: drop expired rows, then LRU rows, to the bound."""
        total = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0]
        if total <= self.max_bytes:
            return
        db.execute(
            "DELETE FROM entries WHERE k IN (SELECT k FROM entries "
            "WHERE expires IS NOT NULL AND expires <= ? LIMIT ?)", (now, _EVICT_BATCH * 4),
        )
        total = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0]
        while total > self.max_bytes:
            rows = db.execute(
                "SELECT k, size FROM entries ORDER BY accessed LIMIT ?", (_EVICT_BATCH,)
            ).fetchall()
            doomed = []
            for k, size in rows:
                doomed.append((k,))
                total -= size
                if total <= self.max_bytes:
                    break
            if not doomed:
                break
            db.executemany("DELETE FROM entries WHERE k = ?", doomed)
            self._evictions += len(doomed)

    def delete(self, key: Key) -> bool:
        with self._tx() as db:
            return db.execute(
                "DELETE FROM entries WHERE k = ?", (shared_key(key, ""),)
            ).rowcount > 0

    def clear_namespace(self, namespace: str) -> int:
        with self._tx() as db:
            return int(db.execute("DELETE FROM entries WHERE ns = ?", (namespace,)).rowcount)

    def clear(self) -> None:
        """Drop every entry (every namespace, every process's)."""
        with self._tx() as db:
            db.execute("DELETE FROM entries")

    def count_namespace(self, namespace: str) -> int:
        with self._tx(write=False) as db:
            row = db.execute(
                "SELECT COUNT(*) FROM entries WHERE ns = ? AND (expires IS NULL OR expires > ?)",
                (namespace, self.timer()),
            ).fetchone()
        return int(row[0])

    @property
    def currsize_bytes(self) -> int:
        with self._tx(write=False) as db:
            return int(db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0])

    @property
    def evictions(self) -> int:
        """Evictions this process performed (other processes evict too)."""
        return self._evictions

    # -- cross-process single flight (a lease row per key) ------------------------------
    def acquire_lock(self, key: Key, lease: float) -> str | None:
        token = secrets.token_hex(8)
        skey = shared_key(key, "")
        now = self.timer()
        with self._tx() as db:
            db.execute("DELETE FROM locks WHERE k = ? AND expires <= ?", (skey, now))
            taken = db.execute(
                "INSERT OR IGNORE INTO locks VALUES (?, ?, ?)", (skey, token, now + lease)
            ).rowcount
        return token if taken else None

    def release_lock(self, key: Key, token: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM locks WHERE k = ? AND token = ?", (shared_key(key, ""), token))

    # -- async: the same calls in a worker thread ---------------------------------------
    async def aget(self, key: Key) -> Any:
        return await asyncio.to_thread(self.get, key)

    async def aget_with_ttl(self, key: Key) -> tuple[Any, float | None]:
        return await asyncio.to_thread(self.get_with_ttl, key)

    async def aset(self, key: Key, value: Any, ttl: float | None) -> None:
        await asyncio.to_thread(self.set, key, value, ttl)

    async def adelete(self, key: Key) -> bool:
        return await asyncio.to_thread(self.delete, key)

    async def aclear_namespace(self, namespace: str) -> int:
        return await asyncio.to_thread(self.clear_namespace, namespace)

    async def acount_namespace(self, namespace: str) -> int:
        return await asyncio.to_thread(self.count_namespace, namespace)

    async def aacquire_lock(self, key: Key, lease: float) -> str | None:
        return await asyncio.to_thread(self.acquire_lock, key, lease)

    async def arelease_lock(self, key: Key, token: str) -> None:
        await asyncio.to_thread(self.release_lock, key, token)

    def close(self) -> None:
        """Close every thread's connection (a later call opens a new one)."""
        pid = os.getpid()
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._generation += 1  # other threads reconnect instead of using a closed one
        for _, opened_by, db in connections:
            if opened_by == pid:  # never one inherited across fork()
                db.close()
        self._local.db = None


class _Transaction:
    """``with backend._tx() as db``: one transaction (IMMEDIATE for writes), errors mapped
    to :class:`BackendError`."""

    __slots__ = ("backend", "db", "write")

    def __init__(self, backend: DiskBackend, write: bool) -> None:
        self.backend = backend
        self.write = write

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db = self.backend._db()
            self.db.execute("BEGIN IMMEDIATE" if self.write else "BEGIN")
        except sqlite3.Error as exc:
            raise BackendError(f"disk cache at {self.backend.path}: {exc}") from exc
        return self.db

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is None:
                self.db.execute("COMMIT")
                return
            self.db.execute("ROLLBACK")
        except sqlite3.Error as error:
            raise BackendError(f"disk cache at {self.backend.path}: {error}") from error
        if isinstance(exc, sqlite3.Error):
            raise BackendError(f"disk cache at {self.backend.path}: {exc}") from exc


def _load_secret(path: Path) -> bytes:
    """Read the directory's signing key, creating it (0600) on first use."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    info = path.stat()
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"{path} is readable or writable by others (mode {stat.filemode(info.st_mode)}); "
            "refusing to trust it: chmod 600 it, or delete the cache directory"
        )
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; refusing to trust it")
    for _ in range(50):  # another process may have created it and still be writing
        secret = path.read_bytes()
        if len(secret) == 32:
            return secret
        time.sleep(0.01)
    raise PermissionError(f"{path} does not hold a 32-byte key; delete the cache directory")
