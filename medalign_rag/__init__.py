"""medalign-rag: retrieval-augmented answering and evaluation over longitudinal EHRs.

The front door, for the few names most users need::

    from medalign_rag import AnswerRequest, Pipeline, open_data

    pipeline = Pipeline(open_data("cohort"))
    answer = pipeline.answer([AnswerRequest(patient_id="9900000000001", question="Most recent A1c?", budget=4096)])[0]

Heavy libraries (torch, faiss, llama-index) load when a name that needs them is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AnswerRequest": "medalign_rag.pipeline",
    "Answer": "medalign_rag.pipeline",
    "Pipeline": "medalign_rag.pipeline",
    "IndexBuilder": "medalign_rag.index.builder",
    "IndexSettings": "medalign_rag.index.builder",
    "load_index": "medalign_rag.index.store",
    "make_retriever": "medalign_rag.retrieval.registry",
    "strategy_names": "medalign_rag.retrieval.registry",
    "open_data": "medalign_rag.records.dataset",
    "MedalignError": "medalign_rag.errors",
}

if TYPE_CHECKING:
    from medalign_rag.errors import MedalignError
    from medalign_rag.index.builder import IndexBuilder, IndexSettings
    from medalign_rag.index.store import load_index
    from medalign_rag.pipeline import Answer, AnswerRequest, Pipeline
    from medalign_rag.records.dataset import open_data
    from medalign_rag.retrieval.registry import make_retriever, strategy_names


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medalign_rag' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
