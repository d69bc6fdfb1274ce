"""Retrieval stage: rank a patient's chunks for an instruction (dense, bm25, hybrid, temporal, recency, oracle)."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from medalign_rag.errors import MedalignError
from medalign_rag.index.embedding import Embedder
from medalign_rag.index.store import PatientIndex
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.dense import DenseRetriever
from medalign_rag.retrieval.fused import HybridRetriever, OracleRetriever, RecencyRetriever
from medalign_rag.retrieval.lexical import BM25Retriever
from medalign_rag.retrieval.temporal import TemporalCues, TemporalRetriever, parse_temporal_cues

RETRIEVAL_STRATEGIES = ("dense", "bm25", "hybrid", "temporal", "recency", "oracle")
# strategies that embed the query: callers pass `embedder=` for these
EMBEDDING_STRATEGIES = ("dense", "hybrid", "temporal")
ALL_STRATEGIES = ("full", *RETRIEVAL_STRATEGIES)


def make_retriever(
    strategy: str,
    index: PatientIndex,
    *,
    embedder: Embedder | None = None,
    gold_event_ids: Iterable[str] = (),
    time_anchor: datetime | None = None,
    top_k: int = 10,
) -> PatientRetriever:
    common = {"top_k": top_k, "time_anchor": time_anchor}
    if strategy in EMBEDDING_STRATEGIES and embedder is None:
        raise MedalignError(f"strategy {strategy!r} needs an embedding model")
    if strategy == "dense":
        return DenseRetriever(index, embedder, **common)
    if strategy == "bm25":
        return BM25Retriever(index, **common)
    if strategy == "hybrid":
        return HybridRetriever(index, [DenseRetriever(index, embedder), BM25Retriever(index)], **common)
    if strategy == "temporal":
        return TemporalRetriever(index, embedder, **common)
    if strategy == "recency":
        return RecencyRetriever(index, **common)
    if strategy == "oracle":
        return OracleRetriever(index, gold_event_ids, **common)
    raise MedalignError(f"unknown retrieval strategy {strategy!r}; choose from {', '.join(ALL_STRATEGIES)}")


__all__ = [
    "ALL_STRATEGIES",
    "EMBEDDING_STRATEGIES",
    "RETRIEVAL_STRATEGIES",
    "BM25Retriever",
    "DenseRetriever",
    "HybridRetriever",
    "OracleRetriever",
    "PatientRetriever",
    "RecencyRetriever",
    "TemporalCues",
    "TemporalRetriever",
    "make_retriever",
    "parse_temporal_cues",
]
