"""Hybrid retrieval: reciprocal rank fusion of the dense and BM25 rankings."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

import numpy as np

from medalign_rag.index.embedding import Embedder
from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.dense import DenseRetriever
from medalign_rag.retrieval.lexical import BM25Retriever
from medalign_rag.retrieval.registry import register_retriever

RRF_K = 60  # Cormack et al. 2009; the constant every RRF implementation defaults to


def reciprocal_rank_fusion(score_lists: Iterable[np.ndarray], k: int = RRF_K) -> np.ndarray:
    """RRF over full rankings. Written out (not ranx.fuse) because building ranx Run objects per query costs
    more than the whole fusion; tests/test_retrieval.py checks it against ranx."""
    fused = None
    for scores in score_lists:
        order = np.argsort(-np.asarray(scores), kind="stable")
        ranks = np.empty(len(order), dtype=np.float64)
        ranks[order] = np.arange(1, len(order) + 1)
        contribution = 1.0 / (k + ranks)
        fused = contribution if fused is None else fused + contribution
    return fused if fused is not None else np.zeros(0)


@register_retriever("hybrid", needs_embedder=True)
class HybridRetriever(PatientRetriever):
    def __init__(self, index: PatientIndex, embedder: Embedder, *, top_k: int = 10,
                 time_anchor: datetime | None = None, k: int = RRF_K) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.dense = DenseRetriever(index, embedder)
        self.bm25 = BM25Retriever(index)
        self.k = k

    @classmethod
    def create(cls, index, *, embedder, time_anchor, gold_event_ids, top_k) -> "HybridRetriever":
        return cls(index, embedder, top_k=top_k, time_anchor=time_anchor)

    def fused_scores(self, query: str) -> np.ndarray:
        return reciprocal_rank_fusion((self.dense.scores(query), self.bm25.scores(query)), self.k)

    def scores(self, query: str) -> np.ndarray:
        return self.fused_scores(query)
