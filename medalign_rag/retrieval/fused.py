"""Hybrid (reciprocal rank fusion of dense and BM25), recency, and the gold-evidence oracle."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

import numpy as np

from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever

RRF_K = 60  # Cormack et al. 2009; the constant every RRF implementation defaults to


def reciprocal_rank_fusion(score_lists: Iterable[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """RRF over full rankings. Written out (not ranx.fuse) because building ranx Run objects per query costs
    more than the whole fusion; tests check it against ranx."""
    fused = None
    for scores in score_lists:
        order = np.argsort(-np.asarray(scores), kind="stable")
        ranks = np.empty(len(order), dtype=np.float64)
        ranks[order] = np.arange(1, len(order) + 1)
        contribution = 1.0 / (k + ranks)
        fused = contribution if fused is None else fused + contribution
    return fused if fused is not None else np.zeros(0)


class HybridRetriever(PatientRetriever):
    strategy = "hybrid"

    def __init__(self, index: PatientIndex, retrievers: list[PatientRetriever], *, top_k: int = 10,
                 time_anchor: datetime | None = None, k: int = RRF_K) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.retrievers = retrievers
        self.k = k

    def scores(self, query: str) -> np.ndarray:
        return reciprocal_rank_fusion((r.scores(query) for r in self.retrievers), self.k)


class RecencyRetriever(PatientRetriever):
    """MedAlign's implicit strategy made explicit: the most recent chunks first."""

    strategy = "recency"

    def scores(self, query: str) -> np.ndarray:
        return np.asarray([c.ordinal for c in self.index.chunks], dtype=np.float64)


class OracleRetriever(PatientRetriever):
    """Chunks holding gold evidence first (most gold events first), then by recency: an upper bound."""

    strategy = "oracle"

    def __init__(self, index: PatientIndex, gold_event_ids: Iterable[str], *, top_k: int = 10,
                 time_anchor: datetime | None = None) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.gold = set(gold_event_ids)

    def scores(self, query: str) -> np.ndarray:
        n_events = max(1, max((c.ordinal + len(c.events) for c in self.index.chunks), default=1))
        return np.asarray(
            [sum(ev.event_id in self.gold for ev in c.events) + c.ordinal / (n_events + 1) for c in self.index.chunks],
            dtype=np.float64,
        )
