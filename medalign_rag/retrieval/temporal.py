"""Temporal retrieval: hybrid (dense + BM25, RRF) steered by the explicit time cues of the instruction.

Clinicians' instructions often say *when* the answer lies: "on 2014-09-14", "since 08/11/2146", "last month",
"in the first hospital visit", "the most recent hemoglobin A1c". Lexical and semantic similarity ignore this, so
`TemporalRetriever` wraps a `HybridRetriever` and uses the cues `time_cues.parse_temporal_cues` finds in two ways:

* **Windows** (explicit dates, ranges, relative periods, visit ordinals) restrict where the answer can be. Chunks
  whose own span overlaps a window come first, then chunks whose *encounter* overlaps it (a stay admitted on the
  date asked about), then everything else; inside each tier the hybrid order is kept. If the instruction also
  names a kind of visit ("office visit", "emergency department visits"), chunks of that kind lead their tier.
* **Direction** ("most recent", "latest", "first", "earliest") orders by time, but only among chunks that match
  the instruction's content (BM25 of the question with the time cues removed, at least half of the best score),
  added as one more reciprocal-rank-fusion list so that recent but unrelated chunks cannot take over the top.

With no cue at all the scores are exactly those of `HybridRetriever`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from medalign_rag.index.embedding import Embedder
from medalign_rag.index.store import PatientIndex
from medalign_rag.records.model import EventKind
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.hybrid import HybridRetriever, reciprocal_rank_fusion
from medalign_rag.retrieval.registry import register_retriever
from medalign_rag.retrieval.time_cues import LATEST, TemporalCues, parse_temporal_cues

# -- per-index arrays -------------------------------------------------------------------------------------------

_KIND_PATTERNS: dict[str, re.Pattern[str]] = {
    "hospital": re.compile(r"inpatient|hospital|admission|hadm", re.IGNORECASE),
    "icu": re.compile(r"\bicu\b|intensive", re.IGNORECASE),
    "emergency": re.compile(r"emerg|\bed\b|\ber\b", re.IGNORECASE),
    "office": re.compile(r"office|outpatient|clinic|ambulatory", re.IGNORECASE),
}
_NOT_A_STAY = re.compile(r"discharge|\bout\b|transfer", re.IGNORECASE)  # "ICU discharge" closes a stay, it is not one
_UNTIL = re.compile(r"until (\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)?)")


def _stamp(moment: datetime) -> np.datetime64:
    return np.datetime64(moment.replace(microsecond=0), "s")


@dataclass
class TimeArrays:
    """Chunk and visit spans of one index as numpy arrays, built once and kept in the index's state."""

    chunk_start: np.ndarray  # datetime64[s], per chunk position
    chunk_end: np.ndarray
    encounter_start: np.ndarray
    encounter_end: np.ndarray
    chunk_kind: dict[str, np.ndarray]  # visit kind -> bool per chunk (its encounter is of that kind)
    visits: dict[str, list[tuple[datetime, datetime]]]  # visit kind -> chronological (start, end) spans


def time_arrays(index: PatientIndex) -> TimeArrays:
    cached = index.state.time_arrays
    if cached is not None:
        return cached
    chunks = index.chunks
    encounter_spans: dict[str, tuple[datetime, datetime, str]] = {}
    icu_stays: list[tuple[datetime, datetime]] = []
    for chunk in chunks:
        end = chunk.encounter_end or chunk.end
        encounter_spans.setdefault(chunk.encounter_id, (chunk.encounter_start, max(end, chunk.encounter_start),
                                                        chunk.encounter_type))
        # MIMIC-style ICU stays live inside the hospital encounter as visit events ("ICU stay ... until <end>")
        for event in chunk.events:
            if (event.kind == EventKind.visit and event.name and _KIND_PATTERNS["icu"].search(event.name)
                    and not _NOT_A_STAY.search(event.name)):
                until = _UNTIL.search(f"{event.value or ''} {event.text or ''}")
                stay_end = datetime.fromisoformat(until.group(1)) if until else end
                icu_stays.append((event.timestamp, max(stay_end, event.timestamp)))
    visits: dict[str, list[tuple[datetime, datetime]]] = {kind: [] for kind in (*_KIND_PATTERNS, "any")}
    for start, end, encounter_type in encounter_spans.values():
        visits["any"].append((start, end))
        for kind, pattern in _KIND_PATTERNS.items():
            if pattern.search(encounter_type):
                visits[kind].append((start, end))
    visits["icu"].extend(icu_stays)
    for spans in visits.values():
        spans.sort()
    arrays = TimeArrays(
        chunk_start=np.array([_stamp(c.start) for c in chunks], dtype="datetime64[s]"),
        chunk_end=np.array([_stamp(c.end) for c in chunks], dtype="datetime64[s]"),
        encounter_start=np.array([_stamp(encounter_spans[c.encounter_id][0]) for c in chunks], dtype="datetime64[s]"),
        encounter_end=np.array([_stamp(encounter_spans[c.encounter_id][1]) for c in chunks], dtype="datetime64[s]"),
        chunk_kind={kind: np.array([bool(p.search(c.encounter_type)) for c in chunks], dtype=bool)
                    for kind, p in _KIND_PATTERNS.items()},
        visits=visits,
    )
    index.state.time_arrays = arrays
    return arrays


# -- the retriever ----------------------------------------------------------------------------------------------

WINDOW_TIER_WEIGHT = 10.0  # far above any RRF total (< 1): window tiers order first, the fused score within them
RELEVANCE_FRACTION = 0.5  # a chunk "matches the content" at >= half the best BM25 score of the cue-free question
FALLBACK_CANDIDATES = 10  # with no lexical match at all, direction orders the fusion's top chunks


@register_retriever("temporal", needs_embedder=True)
class TemporalRetriever(PatientRetriever):
    def __init__(self, index: PatientIndex, hybrid: HybridRetriever, *, top_k: int = 10,
                 time_anchor: datetime | None = None, direction_weight: float = 3.0) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.hybrid = hybrid
        self.direction_weight = direction_weight

    @classmethod
    def create(cls, index, *, embedder: Embedder, time_anchor, gold_event_ids, top_k) -> "TemporalRetriever":
        return cls(index, HybridRetriever(index, embedder), top_k=top_k, time_anchor=time_anchor)

    def cues(self, query: str) -> TemporalCues:
        return parse_temporal_cues(query, self.time_anchor)

    def scores(self, query: str) -> np.ndarray:
        fused = self.hybrid.fused_scores(query)
        cues = self.cues(query)
        if cues.empty or len(fused) == 0:
            return fused
        arrays = time_arrays(self.index)
        eligible = np.ones(len(fused), dtype=bool)
        if self.time_anchor is not None:
            eligible = arrays.chunk_start <= _stamp(self.time_anchor)
        total = fused
        if cues.direction is not None:
            total = total + self.direction_weight * reciprocal_rank_fusion(
                [self._direction_order(cues, fused, eligible, arrays)], self.hybrid.k)
        tiers = self._window_tiers(cues, arrays)
        if tiers is not None:
            total = total + WINDOW_TIER_WEIGHT * tiers
        return total

    def _direction_order(self, cues: TemporalCues, fused: np.ndarray, eligible: np.ndarray,
                         arrays: TimeArrays) -> np.ndarray:
        """Content-matching chunks in time order (newest or oldest first), then the rest in fused order."""
        content = self.hybrid.bm25.scores(cues.content_query) if cues.content_query else np.zeros_like(fused)
        content = np.where(eligible, content, 0.0)
        best = float(content.max()) if len(content) else 0.0
        if best > 0:
            candidates = content >= RELEVANCE_FRACTION * best
        else:
            order = np.argsort(-np.where(eligible, fused, -np.inf), kind="stable")[:FALLBACK_CANDIDATES]
            candidates = np.zeros(len(fused), dtype=bool)
            candidates[order] = True
        candidates &= eligible
        seconds = (arrays.chunk_end if cues.direction == "recent" else arrays.chunk_start).astype(np.int64)
        # candidates above everything else; among them newer (or older) first; the fused score breaks ties
        position = np.argsort(np.argsort(seconds if cues.direction == "recent" else -seconds, kind="stable"))
        return np.where(candidates, 2.0 + position / max(len(position), 1), fused)

    def _window_tiers(self, cues: TemporalCues, arrays: TimeArrays) -> np.ndarray | None:
        spans = [(w.start, w.end) for w in cues.windows]
        anchor = self.time_anchor
        for visit in cues.visits:
            known = [s for s in arrays.visits.get(visit.kind, []) if anchor is None or s[0] <= anchor]
            if known:
                start, end = known[0] if visit.ordinal == "first" else known[-1]
                spans.append((start, end + timedelta(seconds=1)))  # [start, end) must hold the last event
        if not spans:
            return None
        in_chunk = np.zeros(len(arrays.chunk_start), dtype=bool)
        in_encounter = np.zeros_like(in_chunk)
        for start, end in spans:
            begin, finish = _stamp(start), _stamp(min(end, LATEST))
            in_chunk |= (arrays.chunk_start < finish) & (arrays.chunk_end >= begin)
            in_encounter |= (arrays.encounter_start < finish) & (arrays.encounter_end >= begin)
        tiers = in_chunk.astype(np.float64) * 2 + (in_encounter & ~in_chunk)
        if cues.visit_kind in arrays.chunk_kind:
            tiers = tiers + 0.5 * ((tiers > 0) & arrays.chunk_kind[cues.visit_kind])
        return tiers
