import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medalign_rag.chunking import chunk_record
from medalign_rag.errors import MedalignError
from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import CHUNKS, MANIFEST, load_index, patient_dir
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.retrieval import make_retriever
from medalign_rag.tokenization import default_counter
from tests.factories import make_record


def write_cohort(folder: Path, n: int, n_encounters: int = 5, seed: int = 0) -> None:
    for i in range(n):
        record = make_record(seed + i, n_encounters=n_encounters, max_events=30, note_words=80,
                             patient_id=f"pt-{i:02d}")
        write_release_xml(record, folder / "ehrs" / f"pt-{i:02d}.xml")


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("indexes")
    return IndexBuilder(IndexSettings(index_dir=index_dir))


def test_build_skip_rebuild_and_retrieve(tmp_path, builder):
    write_cohort(tmp_path, 3)
    data = open_data_folder(tmp_path)
    first = builder.build(data)
    assert [r.status for r in first.results] == ["built"] * 3
    second = builder.build(data)
    assert [r.status for r in second.results] == ["skipped"] * 3

    changed = make_record(99, n_encounters=4, patient_id="pt-01")
    write_release_xml(changed, tmp_path / "ehrs" / "pt-01.xml")
    third = builder.build(data)
    assert [r.status for r in third.results] == ["skipped", "rebuilt", "skipped"]

    index = load_index(builder.settings.index_dir, "pt-01")
    expected = chunk_record(data.load_record("pt-01"), default_counter(), builder.settings.chunking)
    assert [c.chunk_id for c in index.chunks] == [c.chunk_id for c in expected]
    assert index.vectors.ntotal == len(index.window_chunk) >= len(index.chunks)
    # every chunk has at least one window, so no chunk is invisible to dense retrieval
    assert set(np.unique(index.window_chunk)) == set(range(len(index.chunks)))

    dense = make_retriever("dense", index, embedder=builder.embedder)
    lab_chunk = next(c for c in index.chunks if any(ev.name == "Creatinine" for ev in c.events))
    ranked = dense.rank("Creatinine mg/dL")
    assert len(ranked) == len(index.chunks)
    nodes = dense.retrieve("Creatinine mg/dL")
    assert nodes and nodes[0].node.metadata["encounter_id"].startswith("pt-01-enc")
    bm25 = make_retriever("bm25", index)
    assert index.chunks[bm25.rank("creatinine")[0][0]].chunk_id in {
        c.chunk_id for c in index.chunks if any(ev.name == "Creatinine" for ev in c.events)}
    hybrid_top = [index.chunks[p].chunk_id for p, _ in make_retriever(
        "hybrid", index, embedder=builder.embedder).rank("creatinine")[:3]]
    assert lab_chunk.chunk_id in hybrid_top, "a chunk with the asked-for lab ranks near the top, not just somewhere"


def test_a_corrupted_index_is_detected_and_rebuilt(tmp_path, builder):
    write_cohort(tmp_path, 1, seed=40)
    data = open_data_folder(tmp_path)
    builder.build(data)
    folder = patient_dir(builder.settings.index_dir, "pt-00")
    with open(folder / CHUNKS, "r+b") as handle:
        handle.seek(10)
        handle.write(b"XXXX")
    with pytest.raises(MedalignError, match="corrupted"):
        load_index(builder.settings.index_dir, "pt-00")
    (folder / MANIFEST).write_text("{not json", encoding="utf-8")
    with pytest.raises(MedalignError, match="manifest"):
        load_index(builder.settings.index_dir, "pt-00")
    assert builder.build(data).results[0].status == "rebuilt"
    load_index(builder.settings.index_dir, "pt-00")


def test_changed_chunking_settings_trigger_a_rebuild(tmp_path, builder):
    write_cohort(tmp_path, 1, seed=50)
    data = open_data_folder(tmp_path)
    builder.build(data)
    other = IndexBuilder(IndexSettings(index_dir=builder.settings.index_dir,
                                       chunking={"max_tokens": 128}))
    assert not other.is_current(data, "pt-00")
    assert other.build(data).results[0].status == "rebuilt"


def _index_cmd(data: Path, index_dir: Path) -> list[str]:
    return [sys.executable, "-m", "medalign_rag.cli", "index", "--data", str(data), "--index-dir", str(index_dir)]


def test_killing_a_build_leaves_every_index_loadable(tmp_path):
    write_cohort(tmp_path / "data", 8, n_encounters=12, seed=100)
    index_dir = tmp_path / "idx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_index_cmd(tmp_path / "data", index_dir), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    def finished() -> set[str]:  # pathlib's "*" also matches the ".<id>.build-*" staging folders: not indexes
        return {p.parent.name for p in index_dir.glob("*/manifest.json") if not p.parent.name.startswith(".")}

    # Patients are committed one by one after their group is encoded: kill as soon as the first one lands.
    while time.time() < deadline and len(finished()) < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    built_before = finished()
    assert 1 <= len(built_before) < 8, "the kill must land mid-build"
    for patient_id in built_before:
        load_index(index_dir, patient_id)

    rerun = subprocess.run(_index_cmd(tmp_path / "data", index_dir) + ["--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    data = open_data_folder(tmp_path / "data")
    for patient_id in data.patient_ids():
        index = load_index(index_dir, patient_id)
        expected = chunk_record(data.load_record(patient_id), default_counter())
        assert [c.event_ids for c in index.chunks] == [c.event_ids for c in expected]
    assert not list(index_dir.glob(".*.build-*")), "staging folders of the killed build are cleaned up"


def test_two_processes_building_the_same_patients_do_not_corrupt_them(tmp_path):
    write_cohort(tmp_path / "data", 3, n_encounters=8, seed=200)
    index_dir = tmp_path / "idx"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(_index_cmd(tmp_path / "data", index_dir) + ["--force"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    for patient_id in ("pt-00", "pt-01", "pt-02"):
        index = load_index(index_dir, patient_id)
        assert index.vectors.ntotal == index.manifest.n_windows


def _window_texts(builder: IndexBuilder, data, patient_id: str) -> list[str]:
    chunks = chunk_record(data.load_record(patient_id), builder.counter, builder.settings.chunking)
    return [w for chunk in chunks for w in builder.embedder.chunk_windows(chunk)]


def _vectors(index) -> np.ndarray:
    return index.vectors.reconstruct_n(0, index.vectors.ntotal)


def test_a_record_that_gains_an_encounter_re_embeds_only_its_new_windows(tmp_path):
    record_path = tmp_path / "data" / "ehrs" / "pt-00.xml"
    write_release_xml(make_record(7, n_encounters=8, max_events=30, note_words=80, patient_id="pt-00"), record_path)
    data = open_data_folder(tmp_path / "data")
    # fp32 so the cached and fresh vectors can be compared to 1e-5 (bf16 results move ~1e-3 with batch padding)
    builder = IndexBuilder(IndexSettings(index_dir=tmp_path / "idx", encoder="torch-fp32"))
    builder.build(data)
    old_windows = _window_texts(builder, data, "pt-00")
    cache = builder.embedder.cache
    assert cache is not None and cache.misses == len(set(old_windows))

    # the same seed with one more encounter: the first eight are identical, the ninth is new
    write_release_xml(make_record(7, n_encounters=9, max_events=30, note_words=80, patient_id="pt-00"), record_path)
    new_windows = _window_texts(builder, data, "pt-00")
    unseen = set(new_windows) - set(old_windows)
    assert 0 < len(unseen) < len(set(new_windows)) / 2
    misses_before = cache.misses
    assert builder.build(data).results[0].status == "rebuilt"
    assert cache.misses - misses_before == len(unseen)

    assert cache.hits == 0  # the unchanged encounters' vectors came straight from the previous index

    # the incremental build is the build from scratch: same chunks (ids, ordinals, events), same vectors
    index = load_index(tmp_path / "idx", "pt-00")
    assert index.vectors.ntotal == len(new_windows)
    fresh = IndexBuilder(IndexSettings(index_dir=tmp_path / "fresh", embedding_cache=False, encoder="torch-fp32"))
    fresh.build(data)
    scratch = load_index(tmp_path / "fresh", "pt-00")
    assert [c.model_dump() for c in index.chunks] == [c.model_dump() for c in scratch.chunks]
    assert np.array_equal(index.window_chunk, scratch.window_chunk)
    assert np.abs(_vectors(index) - _vectors(scratch)).max() < 1e-5


def test_a_changed_chunking_re_embeds_only_windows_whose_text_changed(tmp_path):
    write_cohort(tmp_path / "data", 2, n_encounters=6, seed=60)
    data = open_data_folder(tmp_path / "data")
    first = IndexBuilder(IndexSettings(index_dir=tmp_path / "idx"))
    first.build(data)
    smaller = IndexBuilder(IndexSettings(index_dir=tmp_path / "idx", chunking={"max_tokens": 128}))
    assert [r.status for r in smaller.build(data).results] == ["rebuilt", "rebuilt"]
    old = {w for pid in data.patient_ids() for w in _window_texts(first, data, pid)}
    new = {w for pid in data.patient_ids() for w in _window_texts(smaller, data, pid)}
    assert smaller.embedder.cache.misses == len(new - old) < len(new)
    assert smaller.embedder.cache.hits > 0


def test_switching_the_encoder_rebuilds_instead_of_mixing_vectors(tmp_path):
    write_cohort(tmp_path / "data", 1, n_encounters=3, seed=70)
    data = open_data_folder(tmp_path / "data")
    reference = IndexBuilder(IndexSettings(index_dir=tmp_path / "idx", encoder="torch-fp32"))
    reference.build(data)
    assert load_index(tmp_path / "idx", "pt-00").manifest.embedding_model == "all-MiniLM-L6-v2"
    faster = IndexBuilder(IndexSettings(index_dir=tmp_path / "idx", encoder="torch-bf16"))
    assert not faster.is_current(data, "pt-00")
    assert faster.build(data).results[0].status == "rebuilt"
    manifest = load_index(tmp_path / "idx", "pt-00").manifest
    assert manifest.embedding_model == "all-MiniLM-L6-v2@torch-bf16"
    assert not reference.is_current(data, "pt-00")
    # the cache keeps the two encoders apart: the bf16 build encoded every window itself
    assert faster.embedder.cache.hits == 0 and faster.embedder.cache.misses > 0
