"""The local engine: this process builds the patients in order, encoding several patients' windows at once.

A patient goes through three steps: prepare (under its lock: skip it if its index is current, else read, chunk and
cut windows; an encounter that is unchanged since the patient's previous index keeps that index's chunks and window
vectors, so a record that grows by one encounter chunks and embeds only that encounter), encode (with the other patients of its group, in one length-sorted stream, through the embedding
cache), commit (under its lock again: write the index atomically, unless another builder finished the same
build meanwhile). One stream for many patients pads far less than one encode call per patient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from medalign_rag.chunking import Chunk, chunk_encounter, chunk_record
from medalign_rag.errors import MedalignError
from medalign_rag.index.store import (
    IndexManifest,
    cleanup_stale_builds,
    load_index,
    patient_dir,
    patient_lock,
    read_manifest,
    save_index,
)

DEFAULT_GROUP_WINDOWS = 2048  # windows encoded together: enough for little padding, small enough for memory


@dataclass
class PreparedPatient:
    """A patient ready to encode: its chunks, every window's owner chunk, and the windows still to embed."""

    patient_id: str
    source_sha256: str
    existed: bool
    chunks: list[Chunk]
    texts: list[str]  # windows to encode, in window order
    owners: np.ndarray  # window -> chunk position, all windows
    # Windows whose vectors come from the previous index: (window positions, vectors); the rest are `texts`.
    reused: tuple[np.ndarray, np.ndarray] | None = None
    seconds: float = 0.0

    @property
    def n_windows(self) -> int:
        return len(self.owners)

    def assemble(self, encoded: np.ndarray) -> np.ndarray:
        """All window vectors in window order: reused ones in their slots, freshly encoded ones in the rest."""
        if self.reused is None:
            return encoded
        positions, vectors = self.reused
        out = np.zeros((self.n_windows, vectors.shape[1] if len(vectors) else encoded.shape[1]), dtype=np.float32)
        fresh = np.ones(self.n_windows, dtype=bool)
        fresh[positions] = False
        out[positions] = vectors
        out[fresh] = encoded
        return out


def _previous_index(builder, patient_id: str):
    """The patient's current index on disk when it was built exactly as this builder would (all but the source):
    then its unchanged encounters' chunks and window vectors are valid for the new build."""
    manifest = read_manifest(builder.settings.index_dir, patient_id)
    if manifest is None:
        return None
    key = manifest.build_key()
    if {k: v for k, v in key.items() if k != "source_sha256"} != \
            {k: v for k, v in builder.expected_key("").items() if k != "source_sha256"}:
        return None
    try:
        return load_index(builder.settings.index_dir, patient_id)
    except MedalignError:
        return None


def _same_encounter(encounter, old_chunks: list[Chunk]) -> bool:
    first = old_chunks[0]
    if (first.encounter_type, first.encounter_start, first.encounter_end) != \
            (encounter.type, encounter.start, encounter.end):
        return False
    old_events = [event for chunk in old_chunks for event in chunk.events]
    return len(old_events) == len(encounter.events) and old_events == encounter.events


def _current_result(builder, patient_id: str, source_sha256: str):
    """A 'skipped' result when the patient's index on disk is current and loads cleanly, else None."""
    from medalign_rag.index.builder import PatientBuildResult

    manifest = read_manifest(builder.settings.index_dir, patient_id)
    if manifest is None or manifest.build_key() != builder.expected_key(source_sha256):
        return None
    try:
        load_index(builder.settings.index_dir, patient_id)
    except MedalignError:
        return None  # damaged: rebuild it
    return PatientBuildResult(patient_id=patient_id, status="skipped", chunks=manifest.n_chunks,
                              windows=manifest.n_windows)


def prepare_patient(builder, source, patient_id: str, *, force: bool = False):
    """PatientBuildResult('skipped') when nothing is to do, else the patient's chunks and windows to encode."""
    started = time.perf_counter()
    index_dir = builder.settings.index_dir
    with patient_lock(index_dir, patient_id):
        source_sha256 = builder.source_fingerprint(source, patient_id)
        if not force:
            skipped = _current_result(builder, patient_id, source_sha256)
            if skipped is not None:
                return skipped
        existed = patient_dir(index_dir, patient_id).exists()
    record = source.load_record(patient_id)
    previous = None if force or not existed else _previous_index(builder, patient_id)
    if previous is None:
        chunks = chunk_record(record, builder.counter, builder.settings.chunking)
        texts: list[str] = []
        owners: list[int] = []
        for position, chunk in enumerate(chunks):
            windows = builder.embedder.chunk_windows(chunk)
            texts.extend(windows)
            owners.extend([position] * len(windows))
        return PreparedPatient(patient_id=patient_id, source_sha256=source_sha256, existed=existed, chunks=chunks,
                               texts=texts, owners=np.asarray(owners, dtype=np.int32),
                               seconds=time.perf_counter() - started)
    return _prepare_from_previous(builder, record, previous, source_sha256, started)


def _prepare_from_previous(builder, record, previous, source_sha256: str, started: float) -> PreparedPatient:
    """Chunk and window only the encounters that changed; reuse the previous index's chunks and vectors for the
    rest (same chunks as chunk_record would make: chunking is per encounter, ordinals re-based)."""
    old_positions: dict[str, list[int]] = {}
    for position, chunk in enumerate(previous.chunks):
        old_positions.setdefault(chunk.encounter_id, []).append(position)
    window_chunk = previous.window_chunk
    starts = np.searchsorted(window_chunk, np.arange(len(previous.chunks) + 1), side="left")
    old_vectors = previous.vectors.reconstruct_n(0, previous.vectors.ntotal) if previous.vectors.ntotal else None

    chunks: list[Chunk] = []
    texts: list[str] = []
    owners: list[int] = []
    reused_positions: list[int] = []
    reused_rows: list[int] = []
    ordinal = 0
    for encounter in record.encounters:
        positions = old_positions.get(encounter.encounter_id)
        if positions and _same_encounter(encounter, [previous.chunks[p] for p in positions]):
            shift = ordinal - previous.chunks[positions[0]].ordinal
            for old in positions:
                new_position = len(chunks)
                chunks.append(previous.chunks[old].model_copy(update={"ordinal": previous.chunks[old].ordinal + shift}))
                rows = range(int(starts[old]), int(starts[old + 1]))
                reused_positions.extend(range(len(owners), len(owners) + len(rows)))
                reused_rows.extend(rows)
                owners.extend([new_position] * len(rows))
        else:
            for chunk in chunk_encounter(record.patient_id, encounter, builder.counter, builder.settings.chunking,
                                         ordinal):
                new_position = len(chunks)
                chunks.append(chunk)
                windows = builder.embedder.chunk_windows(chunk)
                texts.extend(windows)
                owners.extend([new_position] * len(windows))
        ordinal += len(encounter.events)
    reused = None
    if reused_rows and old_vectors is not None:
        reused = (np.asarray(reused_positions, dtype=np.int64), old_vectors[np.asarray(reused_rows, dtype=np.int64)])
    return PreparedPatient(patient_id=record.patient_id, source_sha256=source_sha256, existed=True, chunks=chunks,
                           texts=texts, owners=np.asarray(owners, dtype=np.int32), reused=reused,
                           seconds=time.perf_counter() - started)


def commit_patient(builder, prepared: PreparedPatient, vectors: np.ndarray, *, force: bool = False):
    """Write one prepared patient's index atomically under its lock."""
    from medalign_rag.index.builder import PatientBuildResult

    started = time.perf_counter()
    index_dir = builder.settings.index_dir
    with patient_lock(index_dir, prepared.patient_id):
        if not force:
            done = _current_result(builder, prepared.patient_id, prepared.source_sha256)
            if done is not None:  # another builder wrote this very build while we encoded
                return done
        manifest = IndexManifest(**builder.manifest_fields(prepared.patient_id, prepared.source_sha256),
                                 n_chunks=len(prepared.chunks), n_windows=prepared.n_windows)
        save_index(index_dir, manifest, prepared.chunks, prepared.owners, prepared.assemble(vectors))
    return PatientBuildResult(patient_id=prepared.patient_id, status="rebuilt" if prepared.existed else "built",
                              chunks=len(prepared.chunks), windows=prepared.n_windows,
                              seconds=prepared.seconds + time.perf_counter() - started)


def encode_group(builder, group: list[PreparedPatient]) -> list[np.ndarray]:
    """All windows of the group in one stream (cache first); each patient's share of the time added to it."""
    texts = [text for prepared in group for text in prepared.texts]
    started = time.perf_counter()
    if texts:
        vectors = builder.embedder.embed_texts(texts)
    else:
        vectors = np.zeros((0, builder.embedder.dimension), dtype=np.float32)
    seconds = time.perf_counter() - started
    parts, offset = [], 0
    for prepared in group:
        parts.append(vectors[offset : offset + len(prepared.texts)])
        offset += len(prepared.texts)
        prepared.seconds += seconds * len(prepared.texts) / max(1, len(texts))
    return parts


def build_patients(builder, source, patient_ids, *, force: bool = False, keep_going: bool = True,
                   group_windows: int = DEFAULT_GROUP_WINDOWS, on_patient: Callable | None = None) -> list:
    """Prepare, encode in groups, commit; failures become 'failed' results (or raise with keep_going=False)."""
    from medalign_rag.index.builder import PatientBuildResult

    results = []

    def report(result) -> None:
        results.append(result)
        if on_patient:
            on_patient(result)

    def failed(patient_id: str, exc: Exception) -> None:
        if not keep_going:
            raise exc
        # any failure of one patient (a clear MedalignError or a bug on an odd record) must not stop the others
        message = str(exc) if isinstance(exc, MedalignError) else f"{type(exc).__name__}: {exc}"
        report(PatientBuildResult(patient_id=patient_id, status="failed", error=message))

    group: list[PreparedPatient] = []

    def flush() -> None:
        if not group:
            return
        for prepared, vectors in zip(group, encode_group(builder, group)):
            try:
                report(commit_patient(builder, prepared, vectors, force=force))
            except Exception as exc:
                failed(prepared.patient_id, exc)
        group.clear()

    for patient_id in patient_ids:
        try:
            prepared = prepare_patient(builder, source, patient_id, force=force)
        except Exception as exc:
            failed(patient_id, exc)
            continue
        if not isinstance(prepared, PreparedPatient):
            report(prepared)
            continue
        group.append(prepared)
        if sum(len(p.texts) for p in group) >= group_windows:
            flush()
    flush()
    return results


class LocalEngine:
    """Today's loop in this process, with cross-patient encoding."""

    name = "local"

    def __init__(self, builder, *, group_windows: int = DEFAULT_GROUP_WINDOWS) -> None:
        self.builder = builder
        self.group_windows = group_windows

    def build(self, source, patient_ids: list[str] | None = None, *, force: bool = False,
              on_patient: Callable | None = None, keep_going: bool = True):
        from medalign_rag.index.builder import BuildReport

        started = time.perf_counter()
        cleanup_stale_builds(self.builder.settings.index_dir)
        ids = list(patient_ids) if patient_ids is not None else source.patient_ids()
        results = build_patients(self.builder, source, ids, force=force, keep_going=keep_going,
                                 group_windows=self.group_windows, on_patient=on_patient)
        order = {patient_id: i for i, patient_id in enumerate(ids)}
        results.sort(key=lambda r: order.get(r.patient_id, len(order)))
        return BuildReport(results=results, seconds=time.perf_counter() - started)
