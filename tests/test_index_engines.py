"""Engine and encoder options of `medalign-rag index` and of a config's `index:` block."""

import subprocess
import sys

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.index.builder import IndexBuilder, IndexSettings, RaySettings
from medalign_rag.index.encoders import resolve_encoder
from tests.test_index import write_cohort


def run_index(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medalign_rag.cli", "index", *args], capture_output=True, text=True,
                          timeout=300)


def test_an_unknown_engine_or_encoder_is_one_clear_error(tmp_path):
    write_cohort(tmp_path / "data", 1, n_encounters=2)
    for option, value, message in (("--engine", "spark", "unknown index engine 'spark'"),
                                   ("--encoder", "tensorrt-fp16", "unknown encoder backend 'tensorrt'")):
        result = run_index("--data", str(tmp_path / "data"), "--index-dir", str(tmp_path / "idx"), option, value)
        assert result.returncode != 0
        assert message in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").glob("pt-*"))


def test_settings_resolve_auto_to_a_concrete_encoder_and_validate_ray_options():
    settings = IndexSettings()
    assert settings.encoder == resolve_encoder("auto") != "auto"
    assert IndexSettings.model_validate({"engine": "ray", "ray": {"num_workers": 3}}).ray.num_workers == 3
    with pytest.raises(ValueError):
        RaySettings(num_workers=0)
    with pytest.raises(ValueError):
        IndexSettings(engine="spark")


def test_gpu_workers_refuse_a_cpu_only_encoder():
    pytest.importorskip("ray")
    builder = IndexBuilder(IndexSettings(engine="ray", encoder="onnx-fp32", ray=RaySettings(num_gpus_per_worker=1)))
    with pytest.raises(MedalignError, match="GPU workers need"):
        builder.engine()


def test_ray_actor_layout_defaults_to_one_actor_per_node_holding_its_cpus():
    from medalign_rag.index.engines.ray import actor_layout

    assert actor_layout([2.0], None, None, 0.0) == (1, 2.0)  # this machine: one stream on both cores
    assert actor_layout([16.0, 16.0, 8.0], None, None, 0.0) == (5, 8.0)  # actors of the smallest node's size, as many as fit
    assert actor_layout([2.0], 2, None, 0.0) == (2, 1.0)  # asked-for actors share the CPUs
    assert actor_layout([4.0, 4.0], None, 1.0, 0.0) == (8, 1.0)  # asked-for CPUs per actor: as many as fit
    assert actor_layout([16.0], None, None, 1.0) == (16, 1.0)  # GPU actors take one CPU each
    with pytest.raises(ValueError):
        RaySettings(num_cpus_per_worker=0)
