"""Build per-patient indexes incrementally: unchanged patients are skipped, changed ones rebuilt atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from medalign_rag.chunking import ChunkingSettings
from medalign_rag.errors import MedalignError
from medalign_rag.records.sources import RecordSource
from medalign_rag.index.cache import CACHE_DIRNAME, CACHE_FILENAME, DEFAULT_MAX_BYTES, EmbeddingCache
from medalign_rag.index.embedding import DEFAULT_EMBEDDING_MODEL, Embedder, WindowSettings
from medalign_rag.index.encoders import DEFAULT_ENCODER, REFERENCE_ENCODER, resolve_encoder
from medalign_rag.index.engines import ENGINE_NAMES, make_engine
from medalign_rag.index.store import IndexManifest, read_manifest
from medalign_rag.tokenization import TokenCounter, default_counter

DEFAULT_INDEX_DIR = Path("indexes")


class RaySettings(BaseModel):
    """Where and how wide the `ray` engine runs (ignored by `local`)."""

    model_config = ConfigDict(extra="forbid")
    address: str | None = None  # None: start Ray on this machine; "auto" or "ray://host:10001": join a cluster
    num_workers: int | None = Field(None, ge=1)  # actors, each with one loaded encoder (default: one per node)
    num_gpus_per_worker: float = Field(0.0, ge=0)
    # None: an actor holds all the CPUs of a node (of the smallest node) when num_workers is not set, else an equal
    # share of the cluster's CPUs; a GPU actor takes 1. One encode stream on all of a node's cores ran 1.7x faster
    # than one single-thread actor per core on a 2-core machine (benchmarks/RESULTS.md, Ray layouts).
    num_cpus_per_worker: float | None = Field(None, gt=0)
    patients_per_task: int = Field(4, ge=1)


class IndexSettings(BaseModel):
    index_dir: Path = DEFAULT_INDEX_DIR
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    window_tokens: int = Field(256, ge=8)
    overlap_tokens: int = Field(32, ge=0)
    batch_size: int = Field(64, ge=1)
    # "<backend>-<dtype>": torch-fp32, torch-bf16, onnx-fp32, openvino-fp32, openvino-bf16 (index/encoders.py), or
    # "auto" (resolved here to the fastest validated one installed). Part of every index's build key: switching the
    # encoder rebuilds instead of mixing vectors.
    encoder: str = Field(DEFAULT_ENCODER, validate_default=True)
    # Window vectors by (model, encoder, text hash), so rebuilds re-embed only windows never seen before.
    embedding_cache: bool = True
    embedding_cache_dir: Path | None = None  # default: <index_dir>/.embedding-cache (use a local disk on clusters)
    embedding_cache_max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1 << 20)
    engine: str = "local"  # local | ray (index/engines)
    ray: RaySettings = Field(default_factory=RaySettings)

    @model_validator(mode="after")
    def _windows_advance(self) -> "IndexSettings":
        if self.overlap_tokens >= self.window_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be smaller than window_tokens "
                             f"({self.window_tokens}), or windows would not advance")
        return self

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        try:
            return resolve_encoder(value)
        except MedalignError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, value: str) -> str:
        if value not in ENGINE_NAMES:
            raise ValueError(f"unknown index engine {value!r}: choose one of {', '.join(ENGINE_NAMES)}")
        return value

    def cache_path(self) -> Path:
        folder = self.embedding_cache_dir or Path(self.index_dir) / CACHE_DIRNAME
        return Path(folder) / CACHE_FILENAME


class PatientBuildResult(BaseModel):
    patient_id: str
    status: Literal["built", "rebuilt", "skipped", "failed"]
    chunks: int = 0
    windows: int = 0
    seconds: float = 0.0
    error: str | None = None


class BuildReport(BaseModel):
    results: list[PatientBuildResult]
    seconds: float

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


class IndexBuilder:
    """Holds the embedding model so a whole cohort is built with one load; `build` runs the configured engine."""

    def __init__(self, settings: IndexSettings | None = None, counter: TokenCounter | None = None, *,
                 device: str = "cpu") -> None:
        self.settings = settings or IndexSettings()
        self.counter = counter or default_counter()
        self.device = device
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            settings = self.settings
            embedder = Embedder(
                settings.embedding_model,
                WindowSettings(settings.window_tokens, settings.overlap_tokens),
                batch_size=settings.batch_size,
                encoder=settings.encoder,
                device=self.device,
            )
            if settings.embedding_cache:
                embedder.cache = EmbeddingCache(settings.cache_path(), embedder.cache_namespace, embedder.dimension,
                                                max_bytes=settings.embedding_cache_max_bytes)
            self._embedder = embedder
        return self._embedder

    @property
    def manifest_embedding_model(self) -> str:
        """The model as the manifest records it: the encoder is appended unless it is the reference torch-fp32,
        so indexes built before encoders were selectable stay valid and any other encoder forces a rebuild."""
        if self.settings.encoder == REFERENCE_ENCODER:
            return self.settings.embedding_model
        return f"{self.settings.embedding_model}@{self.settings.encoder}"

    def expected_key(self, source_sha256: str) -> dict:
        return {
            "format_version": IndexManifest.model_fields["format_version"].default,
            "embedding_model": self.manifest_embedding_model,
            "chunking": self.settings.chunking.model_dump(),
            "window_tokens": self.settings.window_tokens,
            "overlap_tokens": self.settings.overlap_tokens,
            "token_counter": self.counter.name,
            "source_sha256": source_sha256,
        }

    def manifest_fields(self, patient_id: str, source_sha256: str) -> dict:
        """Every manifest field but the counts, for a build of this patient from this source version."""
        return {
            "patient_id": patient_id,
            "embedding_model": self.manifest_embedding_model,
            "dimension": self.embedder.dimension,
            "chunking": self.settings.chunking,
            "window_tokens": self.settings.window_tokens,
            "overlap_tokens": self.settings.overlap_tokens,
            "token_counter": self.counter.name,
            "source_sha256": source_sha256,
        }

    @staticmethod
    def source_fingerprint(data: RecordSource, patient_id: str) -> str:
        return data.fingerprint(patient_id)

    def is_current(self, data: RecordSource, patient_id: str) -> bool:
        manifest = read_manifest(self.settings.index_dir, patient_id)
        if manifest is None:
            return False
        return manifest.build_key() == self.expected_key(data.fingerprint(patient_id))

    def build_patient(self, data: RecordSource, patient_id: str, *, force: bool = False) -> PatientBuildResult:
        """Build one patient here and now (the pipeline's build on first use), whatever the engine setting."""
        from medalign_rag.index.engines.local import build_patients

        (result,) = build_patients(self, data, [patient_id], force=force, keep_going=False)
        return result

    def engine(self, name: str | None = None):
        """The engine that `build` runs: the settings' own unless `name` says otherwise."""
        name = name or self.settings.engine
        if name == "ray":
            ray = self.settings.ray
            return make_engine("ray", self, address=ray.address, num_workers=ray.num_workers,
                               num_gpus_per_worker=ray.num_gpus_per_worker,
                               num_cpus_per_worker=ray.num_cpus_per_worker, patients_per_task=ray.patients_per_task)
        return make_engine(name, self)

    def build(
        self,
        data: RecordSource,
        patient_ids: list[str] | None = None,
        *,
        force: bool = False,
        on_patient: Callable[[PatientBuildResult], None] | None = None,
        keep_going: bool = True,
    ) -> BuildReport:
        return self.engine().build(data, patient_ids, force=force, on_patient=on_patient, keep_going=keep_going)
