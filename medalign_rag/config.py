"""Run configs: one YAML file describes a whole run (data, index, strategies, budgets, backend, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medalign_rag.errors import MedalignError
from medalign_rag.index.builder import IndexSettings

DEFAULT_BUDGETS = [2048, 4096, 8192, 16384, 32768]


class SynthSettings(BaseModel):
    """When set, a missing data folder is created with the synthetic generator."""

    model_config = ConfigDict(extra="forbid")
    patients: int = 20
    seed: int = 7


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    data: Path
    synth: SynthSettings | None = None
    index: IndexSettings = Field(default_factory=IndexSettings)
    strategies: list[str] = Field(default_factory=lambda: ["full", "recency", "bm25", "dense", "hybrid", "temporal", "oracle"])
    budgets: list[int] = Field(default_factory=lambda: list(DEFAULT_BUDGETS))
    backend: str = "none"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    prompt_template: Path | None = None
    reserve_tokens: int = 256
    max_new_tokens: int = 256
    max_instructions: int | None = None  # a deterministic subset (sorted by id, then sampled with `seed`)
    answer_max_instructions: int | None = None  # generate answers only for this many (retrieval metrics use all)
    answer_strategies: list[str] | None = None  # generate answers only for these strategies (default: all)
    answer_budgets: list[int] | None = None
    seed: int = 0
    bootstrap_resamples: int = 1000
    k_values: list[int] = Field(default_factory=lambda: [1, 5, 10])


def load_run_config(path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise MedalignError("config file not found", path=path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise MedalignError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=path,
                            line=line + 1 if line is not None else None) from exc
    if not isinstance(raw, dict):
        raise MedalignError("a run config must be a YAML mapping", path=path)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise MedalignError(f"field {field!r}: {first['msg']}", path=path) from exc


def make_generator(backend: str, run: RunConfig | None = None):
    from medalign_rag.generation import create_generator

    options = dict(run.backend_options) if run is not None and run.backend == backend else {}
    return create_generator(backend, **options)
