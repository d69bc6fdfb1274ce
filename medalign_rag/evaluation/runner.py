"""The ablation runner: every instruction x strategy x budget, resumable, with retrieval and answer metrics.

The runner only schedules, caches and scores: every item goes through the pipeline's one answer path
(`Pipeline.prepare` / `Pipeline.complete`), with the instruction's gold evidence handed to the oracle.

Results are appended to `results.jsonl` one item at a time, each under a key that hashes everything that
determines it: the patient's record fingerprint, the instruction, strategy, budget, index settings, backend,
prompt, and this module's result format. An interrupted run resumes where it stopped; a changed record or
config recomputes only the items the change touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from medalign_rag.config import RunConfig
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Instruction

RESULTS_FILE = "results.jsonl"
RESULT_FORMAT = 3  # bump when an item's fields or their meaning change: old results are then recomputed
# 3: coverage over evidence groups (+ all/any, legacy Encounter rule), answer presence, question type and form


class ItemResult(BaseModel):
    key: str
    instruction_id: str
    patient_id: str
    strategy: str
    budget: int
    context_tokens: int
    available_tokens: int
    n_chunks: int
    n_gold_events: int
    evidence_coverage: float | None = None  # mean share of gold evidence groups covered
    coverage_all: float | None = None  # 1.0 when every gold group is covered
    coverage_any: float | None = None  # 1.0 when at least one is
    coverage_legacy_encounter: float | None = None  # mean share under the legacy Encounter rule
    answer_presence: float | None = None  # share of the gold answer's values found in the context (lookups)
    question_type: str | None = None  # FHIR-AgentBench template family / synthetic category
    question_form: str | None = None  # yes_no / count / computed / lookup (FHIR-AgentBench)
    retrieval: dict[str, float] = {}
    seconds_context: float
    backend: str = "none"
    answer: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    answer_metrics: dict[str, float] = {}


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def select_instructions(instructions: list[Instruction], limit: int | None, seed: int) -> list[Instruction]:
    ordered = sorted(instructions, key=lambda i: i.instruction_id)
    if limit is None or limit >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, limit), key=lambda i: i.instruction_id)


class ResultStore:
    """Append-only JSONL of finished items; a torn last line from a killed run is ignored and rewritten."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, ItemResult] = {}
        if path.is_file():
            good_lines = []
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        item = ItemResult.model_validate_json(line)
                    except ValueError:
                        continue
                    self.items[item.key] = item
                    good_lines.append(line if line.endswith("\n") else line + "\n")
            from medalign_rag.atomic import atomic_write_text

            atomic_write_text(path, "".join(good_lines))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def add(self, item: ItemResult) -> None:
        self._handle.write(item.model_dump_json() + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.items[item.key] = item

    def close(self) -> None:
        self._handle.close()


class AblationRunner:
    def __init__(self, config: RunConfig, data, out_dir: Path, generator=None, counter=None) -> None:
        from medalign_rag.generation.prompt import load_prompt_template
        from medalign_rag.pipeline import Pipeline

        self.config = config
        self.data = data
        self.out_dir = Path(out_dir)
        self.generator = generator
        self.pipeline = Pipeline(data, config.index, generator=generator,
                                 prompt_template=load_prompt_template(config.prompt_template), counter=counter,
                                 reserve_tokens=config.reserve_tokens, max_new_tokens=config.max_new_tokens)
        self.counter = self.pipeline.counter
        self._similarity = None
        self.skipped_budgets: list[int] = []
        # Rankings do not depend on the budget: score each (instruction, strategy) once, not once per budget.
        self._retrieval_cache: dict[tuple[str, str], dict[str, float]] = {}

    # -- keys -------------------------------------------------------------------------------------------
    def _base_key(self) -> dict:
        return {
            "format": RESULT_FORMAT,
            "index": self.config.index.model_dump(mode="json", exclude={"index_dir", "batch_size"}),
            "counter": self.counter.name,
            "reserve": self.config.reserve_tokens,
            "prompt": self.pipeline.prompt_template.model_dump(),
            "k": self.config.k_values,
        }

    def item_key(self, instruction: Instruction, record_fingerprint: str, strategy: str, budget: int,
                 answered: bool) -> str:
        payload = {
            **self._base_key(),
            "record": record_fingerprint,
            "instruction": instruction.model_dump(mode="json"),
            "strategy": strategy,
            "budget": budget,
        }
        if answered:
            payload["backend"] = {"name": self.generator.name, "options": self.config.backend_options,
                                  "max_new_tokens": self.config.max_new_tokens}
        return _digest(payload)

    def wants_answer(self, instruction_rank: int, strategy: str, budget: int) -> bool:
        if self.generator is None or budget in self.skipped_budgets:
            return False
        c = self.config
        if c.answer_max_instructions is not None and instruction_rank >= c.answer_max_instructions:
            return False
        if c.answer_strategies is not None and strategy not in c.answer_strategies:
            return False
        if c.answer_budgets is not None and budget not in c.answer_budgets:
            return False
        return True

    def budgets(self) -> list[int]:
        budgets = sorted(set(self.config.budgets))
        if self.generator is not None:
            limit = self.generator.context_length
            self.skipped_budgets = [b for b in budgets if b > limit]
        return budgets

    # -- metrics ----------------------------------------------------------------------------------------
    def _retrieval_metrics(self, ranked_chunk_ids: list[str] | None, gold: set[str], qid: str,
                           index) -> dict[str, float]:
        if ranked_chunk_ids is None or not gold:
            return {}
        from medalign_rag.evaluation.metrics import retrieval_scores

        qrels = {c.chunk_id: 1 for c in index.chunks if any(ev.event_id in gold for ev in c.events)}
        if not qrels:
            return {}
        n = len(ranked_chunk_ids)
        run = {chunk_id: float(n - r) for r, chunk_id in enumerate(ranked_chunk_ids[:100])}
        return retrieval_scores({qid: run}, {qid: qrels}, k_values=tuple(self.config.k_values)).get(qid, {})

    def _cached_retrieval_metrics(self, instruction: Instruction, prepared, gold: set[str]) -> dict[str, float]:
        key = (instruction.instruction_id, prepared.request.strategy)
        if key not in self._retrieval_cache:
            self._retrieval_cache[key] = self._retrieval_metrics(
                prepared.ranked_chunk_ids, gold, instruction.instruction_id,
                self.pipeline.patient_index(instruction.patient_id))
        return dict(self._retrieval_cache[key])

    def _answer_metrics(self, instruction: Instruction, answer: str) -> dict[str, float]:
        """Text overlap only against prose references; FHIR-AgentBench rows by the strict matcher (the lenient
        one kept beside it as `answer_match_lenient`)."""
        from medalign_rag.evaluation.metrics import natural_language_references, rouge_l

        metrics: dict[str, float] = {}
        references = natural_language_references(instruction)
        if references:
            metrics["rouge_l"] = rouge_l(answer, references)
            if self._similarity is None:
                from medalign_rag.evaluation.metrics import EmbeddingSimilarity

                self._similarity = EmbeddingSimilarity()
            metrics["embedding_f1"] = float(self._similarity.score([answer], [references])[0])
        gold_rows = instruction.metadata.get("true_answer")
        if gold_rows is not None:
            from medalign_rag.evaluation.answer_match import answer_matches_lenient, answer_matches_strict

            template = instruction.metadata.get("template")
            try:
                metrics["answer_match"] = float(answer_matches_strict(
                    answer, gold_rows, question=instruction.question, template=template))
                metrics["answer_match_lenient"] = float(answer_matches_lenient(
                    answer, gold_rows, question=instruction.question, template=template))
            except MedalignError:
                pass  # a gold answer that does not parse as rows: nothing to match against
        return metrics

    def _item(self, key: str, instruction: Instruction, prepared, gold: set[str]) -> ItemResult:
        from medalign_rag.evaluation.metrics import item_evidence_scores

        assembled = prepared.context
        return ItemResult(
            key=key,
            instruction_id=instruction.instruction_id,
            patient_id=instruction.patient_id,
            strategy=prepared.request.strategy,
            budget=prepared.request.budget,
            context_tokens=assembled.context_tokens,
            available_tokens=assembled.available_tokens,
            n_chunks=len(assembled.chunk_ids),
            n_gold_events=len(gold),
            **item_evidence_scores(instruction, assembled.event_ids, assembled.text),
            retrieval=self._cached_retrieval_metrics(instruction, prepared, gold),
            seconds_context=prepared.seconds_context,
        )

    # -- the run ----------------------------------------------------------------------------------------
    def run(self, instructions: list[Instruction], on_item: Callable[[int], None] | None = None) -> list[ItemResult]:
        """Every instruction x strategy x budget; finished items are reused, the rest computed and stored."""
        from medalign_rag.pipeline import AnswerRequest

        budgets = self.budgets()
        store = ResultStore(self.out_dir / RESULTS_FILE)
        results: list[ItemResult] = []
        by_patient: dict[str, list[tuple[int, Instruction]]] = defaultdict(list)
        for rank, instruction in enumerate(instructions):
            by_patient[instruction.patient_id].append((rank, instruction))

        def finished(item: ItemResult) -> None:
            results.append(item)
            if on_item:
                on_item(1)

        try:
            for patient_id in sorted(by_patient):
                fingerprint = self.data.fingerprint(patient_id)
                for rank, instruction in by_patient[patient_id]:
                    gold = set(instruction.evidence_event_ids)
                    to_answer: list[tuple[ItemResult, object]] = []
                    for strategy in self.config.strategies:
                        for budget in budgets:
                            answered = self.wants_answer(rank, strategy, budget)
                            key = self.item_key(instruction, fingerprint, strategy, budget, answered)
                            if key in store:
                                finished(store.items[key])
                                continue
                            request = AnswerRequest(patient_id=patient_id, question=instruction.question,
                                                    strategy=strategy, budget=budget,
                                                    time_anchor=instruction.time_anchor)
                            prepared = self.pipeline.prepare(request, gold_event_ids=gold)
                            item = self._item(key, instruction, prepared, gold)
                            if answered:
                                to_answer.append((item, prepared))
                            else:
                                store.add(item)
                                finished(item)
                    answers = self.pipeline.complete([prepared for _, prepared in to_answer])
                    for (item, _), answer in zip(to_answer, answers):
                        item.backend = answer.backend
                        item.answer = answer.answer
                        item.prompt_tokens = answer.prompt_tokens
                        item.completion_tokens = answer.completion_tokens
                        item.latency_s = answer.latency_s
                        item.answer_metrics = self._answer_metrics(instruction, answer.answer or "")
                        store.add(item)
                        finished(item)
        finally:
            store.close()
        return results
