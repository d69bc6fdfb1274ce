"""A bounded, shared cache of window embeddings, so a rebuild re-embeds only windows it has never seen.

Key: (model, encoder backend + dtype, sha256 of the window text). A window's text holds its chunk header and its
event lines, so a record that gains an encounter changes only the new encounter's windows, and a changed chunking
setting changes only the windows whose text changed; every other window is a cache hit.

Storage: one SQLite file beside the indexes (`<index_dir>/.embedding-cache/embeddings.sqlite`) in WAL mode, so
builders in several processes (or Ray workers on one machine) read concurrently and serialise their short write
transactions on SQLite's own lock. It is bounded: past `max_bytes` the least recently used vectors go first.
SQLite's locking needs a local filesystem: on a cluster, give each node its own cache (`cache_dir`), or none.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from medalign_rag.errors import MedalignError

CACHE_DIRNAME = ".embedding-cache"
CACHE_FILENAME = "embeddings.sqlite"
DEFAULT_MAX_BYTES = 2 * 2**30
ROW_OVERHEAD_BYTES = 96  # key, timestamps and B-tree bookkeeping per row, roughly
_SQL_VARIABLES = 500  # stay far below SQLite's limit on bound parameters per statement


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def default_cache_path(index_dir: Path) -> Path:
    return Path(index_dir) / CACHE_DIRNAME / CACHE_FILENAME


class EmbeddingCache:
    """Window vectors of one encoder (`namespace`, e.g. "all-MiniLM-L6-v2|torch-fp32"), LRU-bounded."""

    def __init__(self, path: Path, namespace: str, dimension: int, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = Path(path)
        self.namespace = namespace
        self.dimension = dimension
        self.max_entries = max(1, max_bytes // (dimension * 4 + ROW_OVERHEAD_BYTES))
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        with self._connection() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS vectors (namespace TEXT NOT NULL, text_sha TEXT NOT NULL, "
                "vector BLOB NOT NULL, last_used REAL NOT NULL, PRIMARY KEY (namespace, text_sha)) WITHOUT ROWID"
            )
            db.execute("CREATE INDEX IF NOT EXISTS vectors_last_used ON vectors (last_used)")

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread: sqlite3 connections must not be shared across threads.
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses recent rows, never corrupts
            except sqlite3.DatabaseError as exc:
                raise MedalignError(f"cannot open the embedding cache: {exc} (delete it to start afresh)",
                                    path=self.path) from exc
            self._local.db = db
        return _Transaction(db)

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        """Vectors found for these text hashes; marks them used now."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        with self._connection() as db:
            for start in range(0, len(unique), _SQL_VARIABLES):
                part = unique[start : start + _SQL_VARIABLES]
                rows = db.execute(
                    f"SELECT text_sha, vector FROM vectors WHERE namespace = ? AND text_sha IN "
                    f"({','.join('?' * len(part))})", [self.namespace, *part]).fetchall()
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (self.dimension,):
                        found[key] = vector
            if found:
                now = time.time()
                db.executemany("UPDATE vectors SET last_used = ? WHERE namespace = ? AND text_sha = ?",
                               [(now, self.namespace, key) for key in found])
        return found

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        now = time.time()
        with self._connection() as db:
            db.executemany(
                "INSERT OR REPLACE INTO vectors (namespace, text_sha, vector, last_used) VALUES (?, ?, ?, ?)",
                [(self.namespace, key, vector.tobytes(), now) for key, vector in zip(keys, vectors)])
            (count,) = db.execute("SELECT COUNT(*) FROM vectors").fetchone()
            if count > self.max_entries:
                # Evict down to 90% so a full cache does not evict on every put.
                excess = count - int(self.max_entries * 0.9)
                db.execute("DELETE FROM vectors WHERE (namespace, text_sha) IN (SELECT namespace, text_sha FROM "
                           "vectors ORDER BY last_used LIMIT ?)", (excess,))

    def embed(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors for `texts` in order: cached ones read, the rest encoded (once per distinct text) and stored."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        keys = [text_sha256(text) for text in texts]
        found = self.get(keys)
        missing: dict[str, int] = {}
        for position, key in enumerate(keys):
            if key in found:
                out[position] = found[key]
            elif key not in missing:
                missing[key] = position
        self.hits += len(texts) - sum(1 for key in keys if key not in found)
        self.misses += len(missing)
        if missing:
            fresh = np.asarray(encode([texts[position] for position in missing.values()]), dtype=np.float32)
            self.put(list(missing), fresh)
            by_key = dict(zip(missing, fresh))
            for position, key in enumerate(keys):
                if key in by_key:
                    out[position] = by_key[key]
        return out

    def __len__(self) -> int:
        with self._connection() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM vectors").fetchone()
        return int(count)


class _Transaction:
    """`with` block = one IMMEDIATE transaction (writers queue on SQLite's lock instead of failing mid-way)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
