"""Retrievers rank a patient's chunks for an instruction; each is also a llama-index `BaseRetriever`."""

from __future__ import annotations

from abc import abstractmethod
from datetime import datetime
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from medalign_rag.chunking import Chunk
from medalign_rag.index.store import PatientIndex

if TYPE_CHECKING:
    from medalign_rag.index.embedding import Embedder


def chunk_node(chunk: Chunk, score: float) -> NodeWithScore:
    metadata = {
        "patient_id": chunk.patient_id,
        "encounter_id": chunk.encounter_id,
        "encounter_type": chunk.encounter_type,
        "start": chunk.start.isoformat(),
        "end": chunk.end.isoformat(),
        "part": chunk.part,
        "n_parts": chunk.n_parts,
        "event_ids": chunk.event_ids,
        "token_count": chunk.token_count,
    }
    node = TextNode(
        id_=chunk.chunk_id,
        text=chunk.text,
        metadata=metadata,
        excluded_embed_metadata_keys=list(metadata),
        excluded_llm_metadata_keys=["event_ids", "part", "n_parts", "token_count"],
    )
    return NodeWithScore(node=node, score=float(score))


class PatientRetriever(BaseRetriever):
    """Ranks every eligible chunk of one patient; `top_k` only limits what llama-index callers receive."""

    strategy: str = "base"  # set by @register_retriever
    # Packing order inside a chunk that does not fit whole: `full` keeps a chunk's newest events (a cut of the
    # record from the front); ranked strategies keep a chunk's first events.
    newest_events_first: bool = False
    # False for baselines whose order is not a relevance ranking (`full`): no recall/nDCG is reported for them.
    reports_ranking_metrics: bool = True

    def __init__(self, index: PatientIndex, *, top_k: int = 10, time_anchor: datetime | None = None) -> None:
        super().__init__()
        self.index = index
        self.top_k = top_k
        self.time_anchor = time_anchor

    @classmethod
    def create(cls, index: PatientIndex, *, embedder: Embedder | None, time_anchor: datetime | None,
               gold_event_ids: Iterable[str], top_k: int) -> PatientRetriever:
        """The registry's uniform constructor; retrievers that need more than the index override it."""
        return cls(index, top_k=top_k, time_anchor=time_anchor)

    def eligible(self, position: int) -> bool:
        """A chunk that starts after the instruction's time anchor holds nothing the clinician could know."""
        return self.time_anchor is None or self.index.chunks[position].start <= self.time_anchor

    @abstractmethod
    def scores(self, query: str) -> Sequence[float]:
        """One score per chunk position (higher is better)."""

    def rank(self, query: str) -> list[tuple[int, float]]:
        """Eligible chunk positions by score, ties newest first (one stable numpy sort: this runs per query)."""
        scored = np.asarray(self.scores(query))
        chunks = self.index.chunks
        eligible = np.fromiter((self.eligible(p) for p in range(len(chunks))), dtype=bool, count=len(chunks))
        positions = np.flatnonzero(eligible)
        ordinals = np.fromiter((chunks[p].ordinal for p in positions), dtype=np.int64, count=len(positions))
        order = positions[np.lexsort((-ordinals, -scored[positions]))]
        return list(zip(order.tolist(), scored[order].astype(np.float64).tolist()))

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        ranked = self.rank(query_bundle.query_str)[: self.top_k]
        return [chunk_node(self.index.chunks[p], s) for p, s in ranked]
