"""Build per-patient indexes incrementally: unchanged patients are skipped, changed ones rebuilt atomically."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.errors import MedalignError
from medalign_rag.records.sources import RecordSource
from medalign_rag.index.embedding import DEFAULT_EMBEDDING_MODEL, Embedder, WindowSettings
from medalign_rag.index.store import (
    IndexManifest,
    cleanup_stale_builds,
    load_index,
    patient_dir,
    patient_lock,
    read_manifest,
    save_index,
)
from medalign_rag.tokenization import TokenCounter, default_counter

DEFAULT_INDEX_DIR = Path("indexes")


class IndexSettings(BaseModel):
    index_dir: Path = DEFAULT_INDEX_DIR
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    window_tokens: int = Field(256, ge=8)
    overlap_tokens: int = Field(32, ge=0)
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _windows_advance(self) -> "IndexSettings":
        if self.overlap_tokens >= self.window_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be smaller than window_tokens "
                             f"({self.window_tokens}), or windows would not advance")
        return self


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
    """Holds the embedding model so a whole cohort is built with one load."""

    def __init__(self, settings: IndexSettings | None = None, counter: TokenCounter | None = None) -> None:
        self.settings = settings or IndexSettings()
        self.counter = counter or default_counter()
        self._embedder: Embedder | None = None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(
                self.settings.embedding_model,
                WindowSettings(self.settings.window_tokens, self.settings.overlap_tokens),
                batch_size=self.settings.batch_size,
            )
        return self._embedder

    def expected_key(self, source_sha256: str) -> dict:
        return {
            "format_version": IndexManifest.model_fields["format_version"].default,
            "embedding_model": self.settings.embedding_model,
            "chunking": self.settings.chunking.model_dump(),
            "window_tokens": self.settings.window_tokens,
            "overlap_tokens": self.settings.overlap_tokens,
            "token_counter": self.counter.name,
            "source_sha256": source_sha256,
        }

    def is_current(self, data: RecordSource, patient_id: str) -> bool:
        manifest = read_manifest(self.settings.index_dir, patient_id)
        if manifest is None:
            return False
        return manifest.build_key() == self.expected_key(data.fingerprint(patient_id))

    def build_patient(self, data: RecordSource, patient_id: str, *, force: bool = False) -> PatientBuildResult:
        started = time.perf_counter()
        index_dir = self.settings.index_dir
        with patient_lock(index_dir, patient_id):
            source = data.fingerprint(patient_id)
            previous = read_manifest(index_dir, patient_id)
            existed = patient_dir(index_dir, patient_id).exists()
            if not force and previous is not None and previous.build_key() == self.expected_key(source):
                try:
                    load_index(index_dir, patient_id)
                    return PatientBuildResult(patient_id=patient_id, status="skipped",
                                              chunks=previous.n_chunks, windows=previous.n_windows)
                except MedalignError:
                    pass  # damaged: fall through and rebuild
            record = data.load_record(patient_id)
            chunks = chunk_record(record, self.counter, self.settings.chunking)
            texts: list[str] = []
            owners: list[int] = []
            for position, chunk in enumerate(chunks):
                windows = self.embedder.chunk_windows(chunk)
                texts.extend(windows)
                owners.extend([position] * len(windows))
            vectors = self.embedder.embed_texts(texts) if texts else np.zeros((0, self.embedder.dimension), np.float32)
            manifest = IndexManifest(
                patient_id=patient_id,
                embedding_model=self.settings.embedding_model,
                dimension=self.embedder.dimension,
                chunking=self.settings.chunking,
                window_tokens=self.settings.window_tokens,
                overlap_tokens=self.settings.overlap_tokens,
                token_counter=self.counter.name,
                source_sha256=source,
                n_chunks=len(chunks),
                n_windows=len(texts),
            )
            save_index(index_dir, manifest, chunks, np.asarray(owners, dtype=np.int32), vectors)
        return PatientBuildResult(
            patient_id=patient_id,
            status="rebuilt" if existed else "built",
            chunks=len(chunks),
            windows=len(texts),
            seconds=time.perf_counter() - started,
        )

    def build(
        self,
        data: RecordSource,
        patient_ids: list[str] | None = None,
        *,
        force: bool = False,
        on_patient: Callable[[PatientBuildResult], None] | None = None,
        keep_going: bool = True,
    ) -> BuildReport:
        started = time.perf_counter()
        cleanup_stale_builds(self.settings.index_dir)
        results = []
        for patient_id in patient_ids if patient_ids is not None else data.patient_ids():
            try:
                result = self.build_patient(data, patient_id, force=force)
            except MedalignError as exc:
                if not keep_going:
                    raise
                result = PatientBuildResult(patient_id=patient_id, status="failed", error=str(exc))
            results.append(result)
            if on_patient:
                on_patient(result)
        return BuildReport(results=results, seconds=time.perf_counter() - started)
