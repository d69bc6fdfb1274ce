"""Retrieval stage: rank a patient's chunks for an instruction. Strategies are registered (see `registry`); the
imports below run the built-in registrations in the order users see them: baselines, retrieval, the oracle."""

from medalign_rag.retrieval import full as _full  # noqa: F401  (registers full, recency)
from medalign_rag.retrieval.lexical import BM25Retriever
from medalign_rag.retrieval.dense import DenseRetriever
from medalign_rag.retrieval.hybrid import HybridRetriever
from medalign_rag.retrieval.temporal import TemporalRetriever
from medalign_rag.retrieval.events import EventsRetriever
from medalign_rag.retrieval.oracle import OracleRetriever
from medalign_rag.retrieval.base import PatientRetriever
from medalign_rag.retrieval.full import FullRecordRetriever, RecencyRetriever
from medalign_rag.retrieval.registry import (
    check_strategies,
    make_retriever,
    register_retriever,
    retriever_spec,
    strategy_names,
)
from medalign_rag.retrieval.time_cues import TemporalCues, parse_temporal_cues

__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "EventsRetriever",
    "FullRecordRetriever",
    "HybridRetriever",
    "OracleRetriever",
    "PatientRetriever",
    "RecencyRetriever",
    "TemporalCues",
    "TemporalRetriever",
    "check_strategies",
    "make_retriever",
    "parse_temporal_cues",
    "register_retriever",
    "retriever_spec",
    "strategy_names",
]
