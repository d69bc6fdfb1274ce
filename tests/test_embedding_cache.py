"""The window-embedding cache: hits instead of re-encoding, bounded by LRU, shared by concurrent builders."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from medalign_rag.index.cache import EmbeddingCache, default_cache_path, text_sha256
from medalign_rag.index.encoders import load_encoder


def unit_vectors(n: int, dimension: int = 8, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.slow
def test_a_second_pass_reads_every_window_and_a_changed_window_alone_is_encoded(tmp_path):
    encoder = load_encoder("all-MiniLM-L6-v2", "torch", "fp32")
    encoded: list[str] = []

    def encode(texts):
        encoded.extend(texts)
        return encoder.encode(texts)

    cache = EmbeddingCache(default_cache_path(tmp_path), "all-MiniLM-L6-v2|torch-fp32", encoder.dimension)
    texts = ["Creatinine 1.2 mg/dL", "Hemoglobin A1c 7.1 %", "progress note: stable, continue metformin",
             "Creatinine 1.2 mg/dL"]
    first = cache.embed(texts, encode)
    assert encoded == texts[:3]  # a repeated text is encoded once
    assert np.array_equal(first[0], first[3])

    encoded.clear()
    again = cache.embed(texts, encode)
    assert encoded == [] and np.array_equal(again, first)

    changed = texts[:2] + ["progress note: worse, start insulin"]
    third = cache.embed(changed, encode)
    assert encoded == ["progress note: worse, start insulin"]
    assert np.array_equal(third[:2], first[:2])
    assert np.abs(third[2] - encoder.encode([changed[2]])[0]).max() < 1e-5

    # another encoder (backend or dtype) never sees these vectors
    other = EmbeddingCache(default_cache_path(tmp_path), "all-MiniLM-L6-v2|torch-bf16", encoder.dimension)
    assert other.get([text_sha256(t) for t in texts]) == {}


def test_past_its_size_limit_the_least_recently_used_vectors_go_first(tmp_path):
    dimension = 8
    row = dimension * 4 + 96
    cache = EmbeddingCache(tmp_path / "c.sqlite", "m|torch-fp32", dimension, max_bytes=10 * row)
    assert cache.max_entries == 10
    keys = [f"k{i}" for i in range(10)]
    cache.put(keys, unit_vectors(10))
    cache.get(keys[:3])  # k0..k2 used again: now the most recent
    cache.put(["new0", "new1"], unit_vectors(2, seed=1))
    assert len(cache) <= 10
    left = set(cache.get(keys + ["new0", "new1"]))
    assert {"k0", "k1", "k2", "new0", "new1"} <= left
    assert "k3" not in left and "k4" not in left  # the oldest untouched ones were evicted


def test_concurrent_builders_share_one_cache_without_losing_writes(tmp_path):
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from medalign_rag.index.cache import EmbeddingCache
        worker = int(sys.argv[1])
        cache = EmbeddingCache({str(path)!r}, "m|torch-fp32", 4)
        for batch in range(40):
            keys = [f"w{{worker}}-{{batch}}-{{i}}" for i in range(10)] + [f"common-{{batch}}"]
            vectors = np.full((len(keys), 4), worker + batch / 100, dtype=np.float32)
            cache.put(keys, vectors)
            found = cache.get(keys)
            assert len(found) == len(keys), (worker, batch, len(found))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], stderr=subprocess.PIPE, text=True)
             for n in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    cache = EmbeddingCache(path, "m|torch-fp32", 4)
    assert len(cache) == 3 * 40 * 10 + 40
    found = cache.get([f"w2-39-{i}" for i in range(10)])
    assert all(np.allclose(v, 2.39) for v in found.values()) and len(found) == 10


def test_a_damaged_cache_file_is_one_clear_error(tmp_path):
    path = tmp_path / "broken.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    from medalign_rag.errors import MedalignError

    with pytest.raises(MedalignError, match="embedding cache"):
        EmbeddingCache(path, "m|torch-fp32", 4)
