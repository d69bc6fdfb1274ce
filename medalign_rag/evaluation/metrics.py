"""Retrieval and answer metrics. Pure functions of their inputs; no language model is called here.

Heavy libraries (ranx and its numba JIT, rouge-score, sentence-transformers/torch) are imported on first use so
that `import medalign_rag.evaluation.metrics` stays cheap for callers that need only part of it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np

from medalign_rag.errors import MedalignError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# ---------------------------------------------------------------------------------------------------------------
# Retrieval


def retrieval_scores(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    k_values: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Per-query recall@k, mrr and ndcg@k of `run` (query -> doc -> score) against `qrels` (query -> doc -> grade).

    Queries without any relevant document (no qrels, or only grade 0) are left out rather than scored 0: nothing
    could have been found for them. A query with judgements but no retrieved documents scores 0 everywhere.
    Returns query -> {"recall@1": ..., "mrr": ..., "ndcg@1": ...}.
    """
    from ranx import Qrels, Run, evaluate

    for k in k_values:
        if not isinstance(k, int) or k < 1:
            raise MedalignError(f"retrieval cut-off k must be a positive integer, got {k!r}")
    judged: dict[str, dict[str, int]] = {}
    for query, docs in qrels.items():
        grades = {str(doc): _as_number(grade, int, query, doc, "qrels") for doc, grade in docs.items()}
        relevant = {doc: grade for doc, grade in grades.items() if grade > 0}
        if relevant:
            judged[str(query)] = relevant
    metric_names = [f"recall@{k}" for k in k_values] + ["mrr"] + [f"ndcg@{k}" for k in k_values]
    if not judged:
        return {}

    retrieved: dict[str, dict[str, float]] = {}
    empty_queries: list[str] = []
    for query in judged:
        docs = {str(doc): _as_number(score, float, query, doc, "run") for doc, score in run.get(query, {}).items()}
        if docs:
            retrieved[query] = docs
        else:
            empty_queries.append(query)  # ranx cannot hold a query with no documents

    results: dict[str, dict[str, float]] = {query: {name: 0.0 for name in metric_names} for query in empty_queries}
    if retrieved:
        scored_qrels = Qrels({query: judged[query] for query in retrieved})
        scored_run = Run(retrieved)
        with warnings.catch_warnings():
            # numba's compile-time note about casting uint64 ranks to int64 inside ranx: noise for callers.
            warnings.filterwarnings("ignore", message=".*unsafe cast.*")
            evaluate(scored_qrels, scored_run, metric_names, return_mean=False, make_comparable=False)
        # ranx keeps per-query results on the run, keyed by query id, so no reliance on array order.
        for query in retrieved:
            results[query] = {name: float(scored_run.scores[name][query]) for name in metric_names}
    return {query: results[query] for query in judged}


def _as_number(value: object, kind: type, query: object, doc: object, where: str) -> float | int:
    try:
        number = kind(value)
    except (TypeError, ValueError) as error:
        raise MedalignError(f"{where}[{query!r}][{doc!r}] = {value!r} is not a number") from error
    if isinstance(number, float) and not math.isfinite(number):
        raise MedalignError(f"{where}[{query!r}][{doc!r}] = {value!r} is not a finite number")
    return number


def evidence_coverage(gold_event_ids: Iterable[str], context_event_ids: Iterable[str]) -> float | None:
    """Share of the gold evidence events that made it into the model's context; None when there is no gold."""
    gold = set(gold_event_ids)
    if not gold:
        return None
    return len(gold & set(context_event_ids)) / len(gold)


def bootstrap_interval(
    values: Iterable[float | None],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    method: Literal["percentile", "basic", "BCa"] = "percentile",
) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and a bootstrap confidence interval for it (scipy.stats.bootstrap).

    None values (a metric that does not apply to an item) are left out. With fewer than two values, or when all
    values are equal, there is nothing to resample and lo = hi = mean. No values at all gives (nan, nan, nan).
    Percentile is the default: BCa is undefined for degenerate resamples, which small evaluation sets produce.
    """
    from scipy import stats

    if not 0.0 < confidence < 1.0:
        raise MedalignError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise MedalignError(f"n_resamples must be positive, got {n_resamples}")
    data = np.asarray([float(v) for v in values if v is not None], dtype=float)
    if data.size and not np.all(np.isfinite(data)):
        raise MedalignError("bootstrap_interval got a NaN or infinite value")
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size < 2 or float(data.max()) == float(data.min()):
        return mean, mean, mean
    result = stats.bootstrap(
        (data,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):  # BCa on a degenerate sample; fall back to the point estimate
        return mean, mean, mean
    return mean, lo, hi


# ---------------------------------------------------------------------------------------------------------------
# Answers


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemmer) of `prediction`, best over `references`."""
    if isinstance(references, str):
        raise MedalignError("rouge_l expects a list of reference answers, got a single string")
    if not references:
        raise MedalignError("rouge_l needs at least one reference answer")
    scorer = _rouge_l_scorer()
    return max(scorer.score(reference, prediction)["rougeL"].fmeasure for reference in references)


def load_default_embedding_model():
    """The packaged all-MiniLM-L6-v2, shared with the index stage (one load per process)."""
    from medalign_rag.index.embedding import load_sentence_model

    return load_sentence_model()


class EmbeddingSimilarity:
    """BERTScore-style F1 from a local sentence-transformers model's token embeddings.

    Each token of the prediction is matched to its most similar reference token (cosine) and vice versa:
    precision = mean best similarity of prediction tokens, recall = that of reference tokens, F1 their harmonic
    mean. Special tokens ([CLS], [SEP]) are left out, as in BERTScore; no idf weighting and no baseline
    rescaling, so unrelated texts still score well above 0. Texts longer than the model's max_seq_length
    (256 word pieces for all-MiniLM-L6-v2) are truncated.
    """

    def __init__(self, model: "SentenceTransformer | None" = None, batch_size: int = 32):
        self.model = model if model is not None else load_default_embedding_model()
        self.batch_size = batch_size
        tokenizer = self.model.tokenizer
        self._special_ids = set(tokenizer.all_special_ids)

    def _token_vectors(self, texts: list[str]) -> list[np.ndarray]:
        """Unit-length embeddings of each text's non-special tokens (shape: tokens x dim)."""
        encoded = self.model.encode(
            texts,
            output_value="token_embeddings",
            batch_size=self.batch_size,
            convert_to_numpy=False,
            show_progress_bar=False,
        )
        # Tokenize again, one text at a time (no padding), to know which rows are special tokens.
        tokenized = self.model.tokenizer(
            texts, truncation=True, max_length=self.model.max_seq_length, add_special_tokens=True
        )["input_ids"]
        vectors: list[np.ndarray] = []
        for embedding, input_ids in zip(encoded, tokenized):
            matrix = embedding.detach().cpu().float().numpy()
            if matrix.shape[0] != len(input_ids):
                raise MedalignError(
                    f"token embeddings ({matrix.shape[0]}) and tokens ({len(input_ids)}) disagree for {texts!r:.80}"
                )
            keep = np.array([token not in self._special_ids for token in input_ids], dtype=bool)
            matrix = matrix[keep]
            norms = np.linalg.norm(matrix, axis=1, keepdims=True)
            vectors.append(matrix / np.clip(norms, 1e-12, None))
        return vectors

    @staticmethod
    def _f1(candidate: np.ndarray, reference: np.ndarray) -> float:
        if candidate.shape[0] == 0 or reference.shape[0] == 0:
            return 0.0
        similarity = candidate @ reference.T
        precision = float(similarity.max(axis=1).mean())
        recall = float(similarity.max(axis=0).mean())
        if precision + recall <= 0.0:
            return 0.0
        return 2.0 * precision * recall / (precision + recall)

    def score(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        """F1 of each prediction against its references (best reference), in input order."""
        if len(predictions) != len(references):
            raise MedalignError(
                f"{len(predictions)} predictions but {len(references)} reference lists: they must pair up"
            )
        for position, refs in enumerate(references):
            if isinstance(refs, str) or not refs:
                raise MedalignError(f"prediction {position}: references must be a non-empty list of strings")
        # Encode every distinct text once, in one batched call.
        unique_texts = list(dict.fromkeys([*predictions, *(ref for refs in references for ref in refs)]))
        vectors = dict(zip(unique_texts, self._token_vectors(unique_texts)))
        return [
            max(self._f1(vectors[prediction], vectors[reference]) for reference in refs)
            for prediction, refs in zip(predictions, references)
        ]


# ---------------------------------------------------------------------------------------------------------------
# Per-item scores the ablation runner records


def question_type(instruction) -> str | None:
    """The question's type for per-type tables: its category (FHIR-AgentBench template family, synthetic
    instruction category), else None."""
    return instruction.category or None


def item_evidence_scores(instruction, context_event_ids: Sequence[str], context_text: str) -> dict:
    """What the runner stores per (instruction, strategy, budget) besides timings: coverage (mean share over
    gold groups), all/any covered, coverage under the legacy Encounter rule, answer presence, question type and
    form. Groups come from `statistics.evidence_groups` (each gold event its own group unless the converter
    grouped them)."""
    from medalign_rag.evaluation.answer_match import question_form
    from medalign_rag.evaluation.statistics import answer_presence, coverage_variants, evidence_groups

    ids = list(context_event_ids)
    variants = coverage_variants(evidence_groups(instruction), ids)
    legacy = coverage_variants(evidence_groups(instruction, legacy=True), ids)
    template = instruction.metadata.get("template") if "true_answer" in instruction.metadata else None
    return {
        "evidence_coverage": variants["share"] if variants else None,
        "coverage_all": variants["all"] if variants else None,
        "coverage_any": variants["any"] if variants else None,
        "coverage_legacy_encounter": legacy["share"] if legacy else None,
        "answer_presence": answer_presence(instruction, context_text),
        "question_type": question_type(instruction),
        "question_form": question_form(template, instruction.question) if "true_answer" in instruction.metadata
        else None,
    }


def natural_language_references(instruction) -> list[str]:
    """Reference answers written in prose; serialized result rows (`[[3075]]`, `[['2133-12-31 02:00:00']]`) are
    not, and text-overlap metrics (ROUGE-L, embedding F1) against them would measure formatting."""
    from medalign_rag.evaluation.answer_match import parse_true_answer

    if "true_answer" in instruction.metadata:
        return []
    references = []
    for reference in instruction.reference_answers:
        text = reference.strip()
        if not text:
            continue
        if text.startswith("["):
            try:
                parse_true_answer(text)
                continue
            except MedalignError:
                pass
        references.append(text)
    return references
