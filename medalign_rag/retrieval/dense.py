"""Dense retrieval over the patient's FAISS index of windows; a chunk scores as its best window (small-to-big)."""

from __future__ import annotations

from datetime import datetime

import numpy as np

from medalign_rag.index.embedding import Embedder
from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.registry import register_retriever


@register_retriever("dense", needs_embedder=True)
class DenseRetriever(PatientRetriever):

    def __init__(self, index: PatientIndex, embedder: Embedder, *, top_k: int = 10,
                 time_anchor: datetime | None = None) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.embedder = embedder

    @classmethod
    def create(cls, index, *, embedder, time_anchor, gold_event_ids, top_k) -> "DenseRetriever":
        return cls(index, embedder, top_k=top_k, time_anchor=time_anchor)

    def scores(self, query: str) -> np.ndarray:
        n_chunks = len(self.index.chunks)
        best = np.full(n_chunks, -np.inf, dtype=np.float32)
        total = self.index.vectors.ntotal
        if total == 0:
            return best
        query_vector = self.embedder.embed_query(query).reshape(1, -1)
        similarities, windows = self.index.vectors.search(query_vector, total)
        np.maximum.at(best, self.index.window_chunk[windows[0]], similarities[0])
        return best
