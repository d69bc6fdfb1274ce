"""`full` and `recency`: MedAlign's baseline and its chunk-wise twin; neither looks at the instruction."""

from __future__ import annotations

import numpy as np

from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.registry import register_retriever


@register_retriever("full")
class FullRecordRetriever(PatientRetriever):
    """MedAlign's baseline: the serialized record cut from the front so that its most recent part fits."""

    newest_events_first = True
    reports_ranking_metrics = False

    def scores(self, query: str) -> np.ndarray:
        return np.asarray([c.ordinal for c in self.index.chunks], dtype=np.float64)


@register_retriever("recency")
class RecencyRetriever(PatientRetriever):
    """MedAlign's implicit strategy made explicit: whole chunks, the most recent first."""

    def scores(self, query: str) -> np.ndarray:
        return np.asarray([c.ordinal for c in self.index.chunks], dtype=np.float64)
