"""The Ray engine builds the same indexes as the local one, skips finished patients, and survives a killed worker."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from medalign_rag.index.builder import IndexBuilder, IndexSettings, RaySettings
from medalign_rag.index.store import load_index
from medalign_rag.records.dataset import open_data_folder
from tests.test_index import write_cohort

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def vectors_of(index) -> np.ndarray:
    return index.vectors.reconstruct_n(0, index.vectors.ntotal)


def ray_settings(index_dir, **ray_options) -> IndexSettings:
    # fp32 on both engines: equal to 1e-5 (bf16 vectors move ~1e-3 with how windows are batched)
    return IndexSettings(index_dir=index_dir, engine="ray", embedding_cache=False, encoder="torch-fp32",
                         ray=RaySettings(**{"num_workers": 2, "patients_per_task": 1, **ray_options}))


def test_ray_builds_the_same_indexes_as_the_local_engine_and_skips_them_on_a_rerun(tmp_path, local_ray):
    write_cohort(tmp_path / "data", 3, n_encounters=3)
    data = open_data_folder(tmp_path / "data")
    local = IndexBuilder(IndexSettings(index_dir=tmp_path / "local", embedding_cache=False,
                                       encoder="torch-fp32")).build(data)
    assert [r.status for r in local.results] == ["built"] * 3

    builder = IndexBuilder(ray_settings(tmp_path / "ray"))
    seen = []
    report = builder.build(data, on_patient=seen.append)
    assert [r.status for r in report.results] == ["built"] * 3
    assert sorted(r.patient_id for r in seen) == data.patient_ids()
    for patient_id in data.patient_ids():
        mine, theirs = load_index(tmp_path / "ray", patient_id), load_index(tmp_path / "local", patient_id)
        assert [c.chunk_id for c in mine.chunks] == [c.chunk_id for c in theirs.chunks]
        assert np.array_equal(mine.window_chunk, theirs.window_chunk)
        assert np.abs(vectors_of(mine) - vectors_of(theirs)).max() < 1e-5
        assert mine.manifest.build_key() == theirs.manifest.build_key()

    again = builder.build(data)
    assert [r.status for r in again.results] == ["skipped"] * 3


def _map_workers() -> list:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if line.startswith("ray::") and "MapWorker" in line:
            found.append(proc)
    return found


def test_a_killed_worker_is_replaced_and_every_index_is_complete(tmp_path, local_ray):
    write_cohort(tmp_path / "data", 4, n_encounters=3, seed=10)
    data = open_data_folder(tmp_path / "data")
    index_dir = tmp_path / "ray"
    killed = []

    def kill_a_worker_once_indexes_appear() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if any(index_dir.glob("pt-*/manifest.json")):
                for proc in _map_workers()[:1]:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_once_indexes_appear, daemon=True)
    killer.start()
    report = IndexBuilder(ray_settings(index_dir)).build(data)
    killer.join(timeout=5)
    assert killed, "no Ray worker was running while indexes were written"
    assert [r.status for r in report.results if r.status == "failed"] == []
    assert sorted(r.patient_id for r in report.results) == data.patient_ids()
    for patient_id in data.patient_ids():
        index = load_index(index_dir, patient_id)  # verifies every checksum: nothing half-written
        assert index.vectors.ntotal == len(index.window_chunk) > 0
    assert not list(index_dir.glob(".*.build-*"))


def test_patients_are_dealt_largest_record_first(tmp_path):
    """Ray hands tasks to whichever actor is free: big records first keeps one actor from getting two of them."""
    from medalign_rag.index.engines.ray import _largest_first

    write_cohort(tmp_path, n=4)
    data = open_data_folder(tmp_path)
    ids = data.patient_ids()
    sizes = {p: data.record_path(p).stat().st_size for p in ids}
    ordered = _largest_first(data, ids)
    assert sorted(ordered) == sorted(ids)
    assert [sizes[p] for p in ordered] == sorted(sizes.values(), reverse=True)
    assert _largest_first(object(), ids) == ids  # a source without record files keeps its order
