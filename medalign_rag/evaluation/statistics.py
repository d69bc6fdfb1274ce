"""Statistics that respect how evaluation data is laid out: questions cluster in patients, strategies are compared
on the same questions.

* `clustered_mean` - the per-question mean with a patient-clustered bootstrap interval (patients are resampled,
  each bringing all of its questions), as `scipy.stats.bootstrap` on per-patient (sum, count) pairs;
* `macro_mean` - the mean of per-patient means (each patient weighs the same), with the same interval;
* `paired_difference` - strategy minus baseline on the questions both answered, clustered by patient; the verdict
  says "better"/"worse" only when the interval excludes 0, else "tie";
* `coverage_variants` - evidence coverage as mean share, all covered, any covered, from evidence groups;
* `answer_presence` - LLM-free: does the gold answer (a value, date or name that the record holds) appear in
  the assembled context.

Everything is deterministic for a given seed.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING, Literal

import numpy as np

from medalign_rag.errors import MedalignError

if TYPE_CHECKING:
    from medalign_rag.records.model import Instruction

__all__ = [
    "ClusteredEstimate",
    "PairedDifference",
    "answer_presence",
    "clustered_mean",
    "coverage_variants",
    "evidence_groups",
    "macro_mean",
    "paired_difference",
]


@dataclass(frozen=True)
class ClusteredEstimate:
    """A mean and its patient-clustered bootstrap interval."""

    mean: float
    lo: float
    hi: float
    n_items: int
    n_clusters: int


@dataclass(frozen=True)
class PairedDifference(ClusteredEstimate):
    """Mean of (strategy - baseline) over paired questions; `verdict` is better / worse / tie."""

    verdict: Literal["better", "worse", "tie", "n/a"] = "n/a"


def _check(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise MedalignError(f"confidence must be between 0 and 1, got {confidence}")
    if n_resamples < 1:
        raise MedalignError(f"n_resamples must be positive, got {n_resamples}")


def _cluster_arrays(
    values: Sequence[float | None], clusters: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-cluster sums and counts of the defined values (None is left out), and the number of values."""
    if len(values) != len(clusters):
        raise MedalignError(f"{len(values)} values but {len(clusters)} cluster labels: they must pair up")
    sums: dict[Hashable, float] = defaultdict(float)
    counts: dict[Hashable, int] = defaultdict(int)
    n = 0
    for value, cluster in zip(values, clusters):
        if value is None:
            continue
        number = float(value)
        if not math.isfinite(number):
            raise MedalignError(f"cluster {cluster!r}: value {value!r} is not a finite number")
        sums[cluster] += number
        counts[cluster] += 1
        n += 1
    keys = sorted(sums, key=str)  # deterministic order, whatever the input order
    return np.array([sums[k] for k in keys]), np.array([counts[k] for k in keys], dtype=float), n


def _ratio(sums: np.ndarray, counts: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(sums, axis=axis) / np.sum(counts, axis=axis)


def _bootstrap(
    arrays: tuple[np.ndarray, ...], statistic, point: float, confidence: float, n_resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile interval; nan when there are fewer than two clusters (nothing to resample: no interval)."""
    from scipy import stats

    first = arrays[0]
    if first.size < 2:
        return math.nan, math.nan
    if all(np.all(a == a[0]) for a in arrays):
        return point, point
    result = stats.bootstrap(
        arrays, statistic, paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed),
    )
    lo, hi = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if math.isnan(lo) or math.isnan(hi):
        return point, point
    return lo, hi


def clustered_mean(
    values: Sequence[float | None],
    clusters: Sequence[Hashable],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ClusteredEstimate:
    """Per-item mean with a bootstrap interval that resamples clusters (patients), not items.

    Each resample draws as many patients as there are, with replacement, and takes the mean over all their items
    (a ratio of sums, so a patient with 60 questions weighs 60 times one with 1, as in the point estimate).
    None values are left out; no values at all gives nan; a single patient gives the mean with a nan interval.
    """
    _check(confidence, n_resamples)
    sums, counts, n = _cluster_arrays(values, clusters)
    if n == 0:
        return ClusteredEstimate(math.nan, math.nan, math.nan, 0, 0)
    point = float(sums.sum() / counts.sum())
    lo, hi = _bootstrap((sums, counts), _ratio, point, confidence, n_resamples, seed)
    return ClusteredEstimate(point, lo, hi, n, int(sums.size))


def macro_mean(
    values: Sequence[float | None],
    clusters: Sequence[Hashable],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> ClusteredEstimate:
    """Mean of per-patient means (every patient weighs the same), with a bootstrap over patients."""
    _check(confidence, n_resamples)
    sums, counts, n = _cluster_arrays(values, clusters)
    if n == 0:
        return ClusteredEstimate(math.nan, math.nan, math.nan, 0, 0)
    per_cluster = sums / counts
    point = float(per_cluster.mean())
    lo, hi = _bootstrap(
        (per_cluster,), lambda x, axis=-1: np.mean(x, axis=axis), point, confidence, n_resamples, seed
    )
    return ClusteredEstimate(point, lo, hi, n, int(per_cluster.size))


def paired_difference(
    values: Mapping[Hashable, float | None],
    baseline: Mapping[Hashable, float | None],
    clusters: Mapping[Hashable, Hashable],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Mean of values[item] - baseline[item] over items defined in both, clustered by `clusters[item]`.

    "better" when the whole interval is above 0, "worse" when below, otherwise "tie"; "n/a" with no pairs or
    fewer than two patients (no interval).
    """
    items = sorted((item for item in values if values[item] is not None and baseline.get(item) is not None), key=str)
    missing = [item for item in items if item not in clusters]
    if missing:
        raise MedalignError(f"no cluster (patient) for item(s) {', '.join(map(str, missing[:5]))}")
    differences = [float(values[item]) - float(baseline[item]) for item in items]
    estimate = clustered_mean(differences, [clusters[item] for item in items], confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
    if estimate.n_items == 0 or math.isnan(estimate.lo):
        verdict = "n/a"
    elif estimate.lo > 0:
        verdict = "better"
    elif estimate.hi < 0:
        verdict = "worse"
    else:
        verdict = "tie"
    return PairedDifference(estimate.mean, estimate.lo, estimate.hi, estimate.n_items, estimate.n_clusters,
                            verdict=verdict)


# ---------------------------------------------------------------------------------------------------------------
# Evidence coverage


def evidence_groups(instruction: "Instruction", *, legacy: bool = False) -> list[list[str]]:
    """The instruction's gold evidence as groups (any event of a group covers it).

    Converters that know that several events stand for one gold item (a FHIR Encounter is its admission or its
    discharge) write `metadata["evidence_groups"]` (and `["evidence_groups_legacy"]` for the earlier rule);
    otherwise every gold event is its own group.
    """
    key = "evidence_groups_legacy" if legacy else "evidence_groups"
    groups = instruction.metadata.get(key)
    if groups is None and legacy:
        groups = instruction.metadata.get("evidence_groups")
    if groups is None:
        return [[event_id] for event_id in dict.fromkeys(instruction.evidence_event_ids)]
    return [list(group) for group in groups if group]


def coverage_variants(groups: Sequence[Sequence[str]], context_event_ids: Iterable[str]) -> dict[str, float] | None:
    """{"share", "all", "any"} of the gold groups covered by the context; None without gold.

    share = covered groups / groups (the mean-share coverage reported so far, per group), all = 1.0 when every
    group is covered, any = 1.0 when at least one is.
    """
    groups = [group for group in groups if group]
    if not groups:
        return None
    present = set(context_event_ids)
    covered = [any(event_id in present for event_id in group) for group in groups]
    return {"share": sum(covered) / len(covered), "all": float(all(covered)), "any": float(any(covered))}


# ---------------------------------------------------------------------------------------------------------------
# Answer presence

_NUMBER_TEXT = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
# A number counts only where the context states it as a value: an event's value attribute or an event whose whole
# body is the number (`<event name="Glucose" unit="mg/dL">115</event>`). Any number anywhere would match almost
# every gold number in a long context (ids, times, ranges, doses of other drugs).
_CONTEXT_VALUE = re.compile(r'\bvalue="\s*(' + _NUMBER_TEXT + r')\s*"|>\s*(' + _NUMBER_TEXT + r")\s*</event>")
PRESENCE_TOLERANCE = 0.005  # record values are written with up to 2-4 decimals; gold rows with more


def _context_numbers(context_text: str) -> np.ndarray:
    return np.array([float(a or b) for a, b in _CONTEXT_VALUE.findall(context_text)], dtype=float)


def answer_presence(instruction: "Instruction", context_text: str) -> float | None:
    """Share of the gold answer's values that appear in the assembled context; None when it does not apply.

    Applies to FHIR-AgentBench questions that look a value up (`question_form` "lookup": a date, a name, a
    measured value, a dose) with a non-empty gold answer; yes/no, counts, computed values (totals, lengths of
    stay, changes, averages) and empty answers cannot be checked by looking for them in the text. Values are
    compared normalized: dates and times to the minute ("2133-12-31 02:00"; midnight means the day), numbers
    within 0.005 where the context states them as an event's value, names case-, space- and punctuation-insensitively ("M" is
    also "Male"). An upper bound on what a reader of this context could answer correctly, not a model score.
    """
    from medalign_rag.evaluation.answer_match import (
        AnswerKind,
        canonical_text,
        mentions_text,
        normalize_gold,
        question_form,
    )

    gold_rows = instruction.metadata.get("true_answer")
    template = instruction.metadata.get("template")
    if gold_rows is None or question_form(template, instruction.question) != "lookup":
        return None
    try:
        gold = normalize_gold(gold_rows, question=instruction.question, template=template)
    except MedalignError:
        return None
    if gold.kind in (AnswerKind.none, AnswerKind.yes_no) or not gold.values:
        return None
    distinct = list(dict.fromkeys(zip(gold.value_kinds, gold.values)))
    numbers: np.ndarray | None = None
    canonical: str | None = None
    found = 0
    for kind, value in distinct:
        if kind is AnswerKind.datetime:
            assert isinstance(value, datetime)
            needle = value.strftime("%Y-%m-%d") if value.time() == time(0, 0) else value.strftime("%Y-%m-%d %H:%M")
            found += needle in context_text
        elif kind is AnswerKind.date:
            assert isinstance(value, date)
            found += value.isoformat() in context_text
        elif kind is AnswerKind.number:
            if numbers is None:
                numbers = _context_numbers(context_text)
            found += bool(numbers.size and np.any(np.abs(numbers - float(value)) <= PRESENCE_TOLERANCE))
        else:
            if canonical is None:
                canonical = canonical_text(context_text)
            found += mentions_text(canonical, str(value))
    return found / len(distinct)
