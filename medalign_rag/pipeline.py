"""One instruction through the stages: index -> retrieval -> context -> (generation)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel

from medalign_rag.context import DEFAULT_ANSWER_RESERVE, AssembledContext, assemble_context
from medalign_rag.errors import MedalignError
from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import PatientIndex, load_index
from medalign_rag.records.dataset import DataFolder
from medalign_rag.retrieval import ALL_STRATEGIES, EMBEDDING_STRATEGIES, make_retriever
from medalign_rag.tokenization import TokenCounter, default_counter


SEAM_MARGIN_TOKENS = 4


class Answer(BaseModel):
    patient_id: str
    question: str
    strategy: str
    budget: int
    context_tokens: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    chunk_ids: list[str]
    event_ids: list[str]
    citations: list[dict]
    answer: str | None = None
    backend: str = "none"
    context: str | None = None


class Pipeline:
    """Keeps the embedding model, the generator and loaded indexes, so many instructions share one load."""

    def __init__(
        self,
        data: DataFolder,
        index_settings: IndexSettings | None = None,
        generator=None,
        prompt_template=None,
        counter: TokenCounter | None = None,
        reserve_tokens: int = DEFAULT_ANSWER_RESERVE,
    ) -> None:
        self.data = data
        self.builder = IndexBuilder(index_settings)
        self.generator = generator
        self.prompt_template = prompt_template
        self.counter = counter or (generator.tokenizer if generator is not None else default_counter())
        self.reserve_tokens = reserve_tokens
        self._indexes: dict[str, PatientIndex] = {}

    @property
    def index_dir(self) -> Path:
        return self.builder.settings.index_dir

    def patient_index(self, patient_id: str) -> PatientIndex:
        cached = self._indexes.get(patient_id)
        if cached is None:
            if not self.builder.is_current(self.data, patient_id):
                self.builder.build_patient(self.data, patient_id)
            cached = load_index(self.index_dir, patient_id)
            if len(self._indexes) >= 64:
                self._indexes.pop(next(iter(self._indexes)))
            self._indexes[patient_id] = cached
        return cached

    def overhead_tokens(self, question: str, time_anchor: datetime | None) -> int:
        if self.prompt_template is None:
            from medalign_rag.generation.prompt import load_prompt_template

            self.prompt_template = load_prompt_template()
        if self.generator is not None:
            # the backend's chat template wraps the prompt too; tokenizer seams can add a token or two
            empty_prompt = self.prompt_template.render(question, "", time_anchor)
            return self.generator.count_prompt_tokens(empty_prompt) + SEAM_MARGIN_TOKENS
        return self.prompt_template.overhead_tokens(self.counter, question, time_anchor)

    def ranking(
        self,
        index: PatientIndex,
        question: str,
        strategy: str,
        *,
        time_anchor: datetime | None = None,
        gold_event_ids: Iterable[str] = (),
    ) -> list[int] | None:
        """Chunk positions best first; None for `full`, which is not a ranking but a cut of the record."""
        if strategy == "full":
            return None
        embedder = self.builder.embedder if strategy in EMBEDDING_STRATEGIES else None
        retriever = make_retriever(strategy, index, embedder=embedder, gold_event_ids=gold_event_ids,
                                   time_anchor=time_anchor)
        return [position for position, _ in retriever.rank(question)]

    def context(
        self,
        patient_id: str,
        question: str,
        *,
        strategy: str,
        budget: int,
        time_anchor: datetime | None = None,
        gold_event_ids: Iterable[str] = (),
    ) -> AssembledContext:
        if strategy not in ALL_STRATEGIES:
            raise MedalignError(f"unknown strategy {strategy!r}; choose from {', '.join(ALL_STRATEGIES)}")
        index = self.patient_index(patient_id)
        ranking = self.ranking(index, question, strategy, time_anchor=time_anchor, gold_event_ids=gold_event_ids)
        return self.assemble(index, question, ranking, strategy=strategy, budget=budget, time_anchor=time_anchor)

    def assemble(
        self,
        index: PatientIndex,
        question: str,
        ranking: list[int] | None,
        *,
        strategy: str,
        budget: int,
        time_anchor: datetime | None = None,
    ) -> AssembledContext:
        """Pack a ranking (computed once, reused across budgets) into one budget."""
        return assemble_context(
            index,
            strategy=strategy,
            budget=budget,
            counter=self.counter,
            ranking=ranking,
            overhead_tokens=self.overhead_tokens(question, time_anchor),
            reserve_tokens=self.reserve_tokens,
            time_anchor=time_anchor,
        )

    def answer(
        self,
        patient_id: str,
        question: str,
        *,
        strategy: str,
        budget: int,
        time_anchor: datetime | None = None,
        gold_event_ids: Iterable[str] = (),
        include_context: bool = False,
    ) -> Answer:
        assembled = self.context(patient_id, question, strategy=strategy, budget=budget,
                                 time_anchor=time_anchor, gold_event_ids=gold_event_ids)
        result = Answer(
            patient_id=patient_id,
            question=question,
            strategy=strategy,
            budget=budget,
            context_tokens=assembled.context_tokens,
            chunk_ids=assembled.chunk_ids,
            event_ids=assembled.event_ids,
            citations=[c.model_dump(mode="json") for c in assembled.citations],
            context=assembled.text if include_context or self.generator is None else None,
        )
        if self.generator is not None:
            prompt = self.prompt_template.render(question, assembled.text, time_anchor)
            generated = self.generator.generate([prompt], max_tokens=self.reserve_tokens)[0]
            result.answer = generated.text
            result.prompt_tokens = generated.prompt_tokens
            result.completion_tokens = generated.completion_tokens
            result.latency_s = generated.latency_s
            result.backend = self.generator.name
        return result
