"""One FAISS index per patient on disk: vectors, chunk texts and metadata (JSON, no pickle), and a manifest.

Layout of `<index_dir>/<patient_id>/`:
  manifest.json   what built it (model, dimension, chunking, source hash, format version) and file checksums
  vectors.faiss   inner-product index over L2-normalised window embeddings
  windows.npy     window -> chunk position
  chunks.jsonl    one Chunk per line, events included, so contexts can be re-rendered without the record

A build writes a fresh folder next to the old one and swaps it in by rename, under a per-patient file lock.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
from filelock import FileLock
from pydantic import BaseModel, ValidationError

from medalign_rag.atomic import file_sha256
from medalign_rag.chunking import Chunk, ChunkingSettings
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import check_patient_id

if TYPE_CHECKING:
    import bm25s

    from medalign_rag.context import EventCosts, RenderCache
    from medalign_rag.retrieval.concepts import ConceptTable
    from medalign_rag.retrieval.temporal import TimeArrays

FORMAT_VERSION = 2  # 2: windows embed entry-grouped event briefs
MANIFEST = "manifest.json"
VECTORS = "vectors.faiss"
WINDOWS = "windows.npy"
CHUNKS = "chunks.jsonl"


class IndexManifest(BaseModel):
    format_version: int = FORMAT_VERSION
    patient_id: str
    embedding_model: str
    dimension: int
    chunking: ChunkingSettings
    window_tokens: int
    overlap_tokens: int
    token_counter: str
    source_sha256: str
    n_chunks: int
    n_windows: int
    files_sha256: dict[str, str] = {}

    def build_key(self) -> dict:
        """What must match for an existing index to be reused."""
        return {
            "format_version": self.format_version,
            "embedding_model": self.embedding_model,
            "chunking": self.chunking.model_dump(),
            "window_tokens": self.window_tokens,
            "overlap_tokens": self.overlap_tokens,
            "token_counter": self.token_counter,
            "source_sha256": self.source_sha256,
        }


@dataclass(eq=False)
class IndexState:
    """What later stages derive from a loaded index, built once on first use and dropped with the index.

    Each field is filled by the stage that owns it; deriving the same value twice (two threads at once) is
    harmless because every value is a pure function of the index.
    """

    bm25: bm25s.BM25 | None = None  # retrieval.lexical
    time_arrays: TimeArrays | None = None  # retrieval.temporal
    render: RenderCache | None = None  # context: each event's line, each encounter's opening tag
    event_costs: dict[str, EventCosts] = field(default_factory=dict)  # context: per tokenizer name
    concepts: dict[int | None, ConceptTable] = field(default_factory=dict)  # retrieval.concepts: per vocabulary


@dataclass(eq=False)
class PatientIndex:
    """A loaded index: everything retrieval and context assembly need for one patient."""

    manifest: IndexManifest
    chunks: list[Chunk]
    window_chunk: np.ndarray
    vectors: faiss.Index
    state: IndexState = field(default_factory=IndexState)

    @property
    def patient_id(self) -> str:
        return self.manifest.patient_id


def patient_dir(index_dir: Path, patient_id: str) -> Path:
    return Path(index_dir) / check_patient_id(patient_id)


def patient_lock(index_dir: Path, patient_id: str) -> FileLock:
    Path(index_dir).mkdir(parents=True, exist_ok=True)
    return FileLock(str(Path(index_dir) / f".{check_patient_id(patient_id)}.lock"))


def read_manifest(index_dir: Path, patient_id: str) -> IndexManifest | None:
    path = patient_dir(index_dir, patient_id) / MANIFEST
    if not path.is_file():
        return None
    try:
        return IndexManifest.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError, OSError):
        return None


def save_index(
    index_dir: Path,
    manifest: IndexManifest,
    chunks: list[Chunk],
    window_chunk: np.ndarray,
    vectors: np.ndarray,
) -> Path:
    """Write a complete index into a temporary folder, then swap it in. Caller holds `patient_lock`."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    target = patient_dir(index_dir, manifest.patient_id)
    staging = Path(tempfile.mkdtemp(prefix=f".{manifest.patient_id}.build-", dir=index_dir))
    try:
        flat = faiss.IndexFlatIP(manifest.dimension)
        if len(vectors):
            flat.add(vectors)
        faiss.write_index(flat, str(staging / VECTORS))
        np.save(staging / WINDOWS, window_chunk.astype(np.int32), allow_pickle=False)
        with open(staging / CHUNKS, "w", encoding="utf-8") as handle:
            for chunk in chunks:
                handle.write(chunk.model_dump_json() + "\n")
        manifest.files_sha256 = {name: file_sha256(staging / name) for name in (VECTORS, WINDOWS, CHUNKS)}
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        for name in (VECTORS, WINDOWS, CHUNKS, MANIFEST):
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        retired = None
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{manifest.patient_id}.old-", dir=index_dir))
            os.replace(target, retired / "index")
        os.replace(staging, target)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_index(index_dir: Path, patient_id: str, *, verify: bool = True) -> PatientIndex:
    """Load and check one patient's index; any damage is reported, never silently used."""
    folder = patient_dir(index_dir, patient_id)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise MedalignError(f"no index for patient {patient_id}: run `medalign-rag index`", path=folder)
    try:
        manifest = IndexManifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
    except (ValidationError, ValueError) as exc:
        raise MedalignError(f"corrupted manifest: {str(exc).splitlines()[0]}", path=manifest_path) from exc
    if manifest.format_version != FORMAT_VERSION:
        raise MedalignError(
            f"index format {manifest.format_version} is not {FORMAT_VERSION}: rebuild it", path=manifest_path
        )
    if manifest.patient_id != patient_id:
        raise MedalignError(f"index belongs to patient {manifest.patient_id}, not {patient_id}", path=manifest_path)
    for name, expected in manifest.files_sha256.items():
        path = folder / name
        if not path.is_file():
            raise MedalignError("index file is missing: rebuild the index", path=path)
        if verify and file_sha256(path) != expected:
            raise MedalignError("index file is corrupted (checksum mismatch): rebuild the index", path=path)
    try:
        vectors = faiss.read_index(str(folder / VECTORS))
        window_chunk = np.load(folder / WINDOWS, allow_pickle=False)
        with open(folder / CHUNKS, encoding="utf-8") as handle:
            chunks = [Chunk.model_validate_json(line) for line in handle if line.strip()]
    except Exception as exc:
        raise MedalignError(f"cannot read index: {exc}", path=folder) from exc
    if vectors.d != manifest.dimension or vectors.ntotal != manifest.n_windows or len(chunks) != manifest.n_chunks:
        raise MedalignError("index does not match its manifest: rebuild it", path=folder)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=window_chunk, vectors=vectors)


def cleanup_stale_builds(index_dir: Path) -> None:
    """Remove staging folders left by a build that was killed."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return
    for leftover in index_dir.glob(".*.build-*"):
        lock = FileLock(str(index_dir / f"{leftover.name.split('.build-')[0]}.lock"))
        try:
            with lock.acquire(timeout=0):
                shutil.rmtree(leftover, ignore_errors=True)
        except Exception:
            continue
    for leftover in index_dir.glob(".*.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)
