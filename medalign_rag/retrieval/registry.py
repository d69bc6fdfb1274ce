"""The retriever registry: every strategy name a user sees (CLI help, config checks, report order) comes from here.

A new strategy is one module with one decorated class; `medalign_rag.retrieval` imports the built-in modules
so that their registrations run before any name is listed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Callable, Iterable, TypeVar

from medalign_rag.errors import MedalignError

if TYPE_CHECKING:
    from medalign_rag.index.embedding import Embedder
    from medalign_rag.index.store import PatientIndex
    from medalign_rag.retrieval.base import PatientRetriever
    from medalign_rag.retrieval.vocabulary import Vocabulary

R = TypeVar("R", bound="type[PatientRetriever]")


@dataclass(frozen=True)
class RetrieverSpec:
    name: str
    cls: type
    needs_embedder: bool  # the query is embedded: callers must pass the index builder's embedder
    needs_gold: bool  # evaluation-only: ranks by gold evidence the evaluator hands over


_REGISTRY: dict[str, RetrieverSpec] = {}


def register_retriever(name: str, *, needs_embedder: bool = False, needs_gold: bool = False) -> Callable[[R], R]:
    def decorate(cls: R) -> R:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"retriever {name!r} is already registered by {_REGISTRY[name].cls.__name__}")
        cls.strategy = name
        _REGISTRY[name] = RetrieverSpec(name, cls, needs_embedder, needs_gold)
        return cls

    return decorate


def _registry() -> dict[str, RetrieverSpec]:
    import medalign_rag.retrieval  # noqa: F401  (runs the built-in registrations)

    return _REGISTRY


def strategy_names() -> tuple[str, ...]:
    """Every registered strategy, in registration order (baselines first, the oracle last)."""
    return tuple(_registry())


def retriever_spec(name: str) -> RetrieverSpec:
    registry = _registry()
    if name not in registry:
        raise MedalignError(f"unknown strategy {name!r}; choose from {', '.join(registry)}")
    return registry[name]


def check_strategies(names: Iterable[str], *, field: str = "strategy") -> list[str]:
    """Validate user-given strategy names before anything heavy loads; the error lists the valid ones."""
    names = list(names)
    unknown = [n for n in names if n not in _registry()]
    if unknown:
        raise MedalignError(f"{field}: unknown strateg{'y' if len(unknown) == 1 else 'ies'} "
                            f"{', '.join(map(repr, unknown))}; choose from {', '.join(_REGISTRY)}")
    return names


def make_retriever(
    name: str,
    index: PatientIndex,
    *,
    embedder: Embedder | None = None,
    time_anchor: datetime | None = None,
    gold_event_ids: Iterable[str] = (),
    top_k: int = 10,
    vocabulary: Vocabulary | None = None,
) -> PatientRetriever:
    """`vocabulary`: the record source's clinicians' vocabulary (retrieval/vocabulary.vocabulary_for_source), for
    strategies whose `create` takes one; the others ignore it."""
    spec = retriever_spec(name)
    if spec.needs_embedder and embedder is None:
        raise MedalignError(f"strategy {name!r} needs an embedding model")
    extra = {"vocabulary": vocabulary} if vocabulary is not None and _takes_vocabulary(spec.cls) else {}
    return spec.cls.create(index, embedder=embedder, time_anchor=time_anchor,
                           gold_event_ids=gold_event_ids, top_k=top_k, **extra)


def _takes_vocabulary(cls: type) -> bool:
    return "vocabulary" in inspect.signature(cls.create).parameters
