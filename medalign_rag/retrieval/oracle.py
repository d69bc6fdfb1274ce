"""The gold-evidence oracle: an upper bound for evaluation, never used to answer."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

import numpy as np

from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.registry import register_retriever


@register_retriever("oracle", needs_gold=True)
class OracleRetriever(PatientRetriever):
    """Chunks holding gold evidence first (most gold events first), then by recency."""

    def __init__(self, index: PatientIndex, gold_event_ids: Iterable[str], *, top_k: int = 10,
                 time_anchor: datetime | None = None) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.gold = set(gold_event_ids)

    @classmethod
    def create(cls, index, *, embedder, time_anchor, gold_event_ids, top_k) -> "OracleRetriever":
        return cls(index, gold_event_ids, top_k=top_k, time_anchor=time_anchor)

    def scores(self, query: str) -> np.ndarray:
        n_events = max(1, max((c.ordinal + len(c.events) for c in self.index.chunks), default=1))
        return np.asarray(
            [sum(ev.event_id in self.gold for ev in c.events) + c.ordinal / (n_events + 1) for c in self.index.chunks],
            dtype=np.float64,
        )
