"""Run configs: one YAML file describes a whole run (data, index, strategies, budgets, backend, metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medalign_rag.errors import MedalignError
from medalign_rag.index.builder import IndexSettings
from medalign_rag.retrieval.registry import strategy_names

DEFAULT_BUDGETS = [2048, 4096, 8192, 16384, 32768]


class SynthSettings(BaseModel):
    """When set, a missing data folder is created with the synthetic generator."""

    model_config = ConfigDict(extra="forbid")
    patients: int = Field(20, ge=1)
    seed: int = 7
    copy_forward: float = Field(0.0, ge=0.0, le=1.0)  # share of notes that copy the previous note of their kind


class SplitSettings(BaseModel):
    """A deterministic patient-level tune/test split (see `evaluation.report.split_patients`)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0)


class JudgeSettings(BaseModel):
    """One LLM judge, configured like the answering backend (see `evaluation.judge`)."""

    model_config = ConfigDict(extra="forbid")
    backend: str = "openai"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    response_format: Literal["json_schema", "json_object"] | None = None


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")  # becomes runs/<name>/
    data: Path
    data_format: str | None = None  # a registered record source (medalign-xml, meds, omop, fhir); None: detect
    synth: SynthSettings | None = None
    index: IndexSettings = Field(default_factory=IndexSettings)
    strategies: list[str] = Field(default_factory=lambda: list(strategy_names()), min_length=1)
    budgets: list[int] = Field(default_factory=lambda: list(DEFAULT_BUDGETS), min_length=1)
    backend: str = "none"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    prompt_template: Path | None = None
    reserve_tokens: int = 256
    max_new_tokens: int = 256
    max_instructions: int | None = Field(None, ge=1)  # a deterministic subset (sorted by id, then sampled with `seed`)
    answer_max_instructions: int | None = None  # generate answers only for this many (retrieval metrics use all)
    answer_strategies: list[str] | None = None  # generate answers only for these strategies (default: all)
    answer_budgets: list[int] | None = None
    seed: int = 0
    bootstrap_resamples: int = 1000
    k_values: list[int] = Field(default_factory=lambda: [1, 5, 10])
    # Declared before the run: the strategy the report's goal line is about, and the patient split whose test part
    # it is measured on (rules and thresholds are chosen on the tune part only).
    primary_strategy: str | None = None
    split: SplitSettings | None = None
    # LLM judges of free-text answers (a jury: scores are averaged over the judges that replied validly); the
    # rubric prompt defaults to the packaged one.
    judges: list[JudgeSettings] = Field(default_factory=list)
    judge_prompt: Path | None = None

    @field_validator("strategies", "answer_strategies")
    @classmethod
    def _known_strategies(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            unknown = [s for s in value if s not in strategy_names()]
            if unknown:
                raise ValueError(f"unknown strategies {unknown}; choose from {', '.join(strategy_names())}")
        return value

    @field_validator("budgets", "answer_budgets")
    @classmethod
    def _positive_budgets(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(b <= 0 for b in value):
            raise ValueError(f"budgets must be positive token counts, got {value}")
        return value

    @model_validator(mode="after")
    def _reserve_fits(self) -> "RunConfig":
        if self.reserve_tokens < 1 or self.max_new_tokens < 1:
            raise ValueError("reserve_tokens and max_new_tokens must be at least 1")
        if self.primary_strategy is not None and self.primary_strategy not in self.strategies:
            raise ValueError(f"primary_strategy {self.primary_strategy!r} is not among the run's strategies "
                             f"({', '.join(self.strategies)})")
        return self


def load_run_config(path: Path | str, overrides: dict[str, Any] | None = None, *, text: str | None = None) -> RunConfig:
    """Read and validate a run config. Relative paths in it (data, index_dir, prompt_template) resolve against
    the config file's folder, so a config works from any working directory. `text` reads a packaged config."""
    path = Path(path)
    from_file = text is None
    if from_file and not path.is_file():
        raise MedalignError("config file not found", path=path)
    try:
        if from_file:
            raw_bytes = path.read_bytes()
            try:
                text = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = raw_bytes[: exc.start].count(b"\n") + 1
                raise MedalignError(f"not UTF-8 text (byte 0x{raw_bytes[exc.start]:02x})", path=path, line=line) from None
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        raise MedalignError(f"invalid YAML: {getattr(exc, 'problem', exc)}", path=path,
                            line=line + 1 if line is not None else None) from exc
    if not isinstance(raw, dict):
        raise MedalignError("a run config must be a YAML mapping", path=path)
    if from_file:
        _resolve_relative_paths(raw, path.parent)
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise MedalignError(f"field {field!r}: {first['msg']}", path=path) from exc


def _resolve_relative_paths(raw: dict, folder: Path) -> None:
    def resolve(value):
        return str(folder / value) if isinstance(value, str) and value and not Path(value).is_absolute() else value

    for key in ("data", "prompt_template", "judge_prompt"):
        if key in raw:
            raw[key] = resolve(raw[key])
    if isinstance(raw.get("index"), dict) and "index_dir" in raw["index"]:
        raw["index"]["index_dir"] = resolve(raw["index"]["index_dir"])


def make_generator(backend: str, run: RunConfig | None = None):
    from medalign_rag.generation import create_generator

    options = dict(run.backend_options) if run is not None and run.backend == backend else {}
    return create_generator(backend, **options)
