"""BM25 over the chunks' compact event text (bm25s)."""

from __future__ import annotations

import logging
from datetime import datetime

import bm25s
import numpy as np

from medalign_rag.chunking import Chunk, chunk_header_text, event_search_text
from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.registry import register_retriever

# bm25s logs every index build at DEBUG; a library that configures root logging would print them all.
logging.getLogger("bm25s").setLevel(logging.WARNING)


def chunk_search_text(chunk: Chunk) -> str:
    return "\n".join([chunk_header_text(chunk), *(event_search_text(ev) for ev in chunk.events)])


def bm25_for(index: PatientIndex) -> bm25s.BM25:
    """BM25 is cheap to build, so it is built on first use and kept with the loaded index."""
    model = index.state.bm25
    if model is None:
        corpus = bm25s.tokenize([chunk_search_text(c) for c in index.chunks], stopwords="en", show_progress=False)
        model = bm25s.BM25()
        model.index(corpus, show_progress=False)
        index.state.bm25 = model
    return model


@register_retriever("bm25")
class BM25Retriever(PatientRetriever):

    def __init__(self, index: PatientIndex, *, top_k: int = 10, time_anchor: datetime | None = None) -> None:
        super().__init__(index, top_k=top_k, time_anchor=time_anchor)
        self.model = bm25_for(index)

    def scores(self, query: str) -> np.ndarray:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False, return_ids=False)[0]
        if not tokens:
            return np.zeros(len(self.index.chunks), dtype=np.float32)
        return np.asarray(self.model.get_scores(tokens), dtype=np.float32)
