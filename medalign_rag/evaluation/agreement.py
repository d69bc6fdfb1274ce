"""How well an automatic metric agrees with clinicians' rankings, as in MedAlign (Fleming et al., AAAI 2024).

For each instruction, clinicians ranked the responses of several models (1 = best, ties allowed). A metric agrees
with them when it orders those responses the same way: Kendall's tau-b between the metric's scores and the negated
ranks (so that both read "higher is better"), averaged over instructions, with a bootstrap interval over
instructions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from scipy import stats

from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.metrics import bootstrap_interval
from medalign_rag.records.model import ModelResponse


@dataclass(frozen=True)
class AgreementResult:
    mean: float  # mean Kendall's tau-b over the instructions that could be scored
    lo: float  # bootstrap confidence interval over instructions
    hi: float
    n_instructions: int
    per_instruction: dict[str, float] = field(default_factory=dict)


def kendall_agreement(
    responses: Iterable[ModelResponse],
    scores: Mapping[tuple[str, str], float],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> AgreementResult:
    """Mean per-instruction Kendall's tau-b between `scores[(instruction_id, model_name)]` and clinician ranks.

    Responses without a clinician rank are ignored. Instructions with fewer than two ranked responses, or where
    tau is undefined (all ranks tied or all scores equal), are skipped. A ranked response without a score, or a
    model ranked twice for one instruction, is an error: it would silently change which responses are compared.
    """
    ranked: dict[str, dict[str, float]] = defaultdict(dict)
    for response in responses:
        if response.rank is None:
            continue
        by_model = ranked[response.instruction_id]
        if response.model_name in by_model:
            raise MedalignError(
                f"instruction {response.instruction_id!r}: model {response.model_name!r} is ranked twice"
            )
        by_model[response.model_name] = float(response.rank)

    per_instruction: dict[str, float] = {}
    for instruction_id, by_model in ranked.items():
        if len(by_model) < 2:
            continue
        models = sorted(by_model)
        missing = [model for model in models if (instruction_id, model) not in scores]
        if missing:
            raise MedalignError(
                f"instruction {instruction_id!r}: no metric score for ranked model(s) {', '.join(map(repr, missing))}"
            )
        metric_values = [float(scores[(instruction_id, model)]) for model in models]
        # Rank 1 is best; negate so that, like the metric, higher means better.
        clinician_values = [-by_model[model] for model in models]
        if _constant(metric_values) or _constant(clinician_values):
            continue  # tau-b is undefined (0/0) when one side has no order at all
        tau = stats.kendalltau(metric_values, clinician_values, variant="b").statistic
        if tau is None or math.isnan(tau):
            continue
        per_instruction[instruction_id] = float(tau)

    if not per_instruction:
        raise MedalignError(
            "no instruction has two or more clinician-ranked responses with differing ranks and metric scores"
        )
    taus = [per_instruction[key] for key in sorted(per_instruction)]
    mean, lo, hi = bootstrap_interval(taus, confidence=confidence, n_resamples=n_resamples, seed=seed)
    return AgreementResult(mean=mean, lo=lo, hi=hi, n_instructions=len(taus), per_instruction=per_instruction)


def _constant(values: list[float]) -> bool:
    return max(values) == min(values)


def metric_agreement(
    responses: list[ModelResponse],
    references: Mapping[str, list[str]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, AgreementResult]:
    """Score every model response with each automatic metric against the clinicians' reference answers, then ask
    how well each metric's ordering agrees with the clinicians' ranks (the MedAlign paper's Table 3)."""
    from medalign_rag.evaluation.metrics import EmbeddingSimilarity, rouge_l

    scored = [r for r in responses if r.rank is not None]
    refs = {
        r.instruction_id: references.get(r.instruction_id) or ([r.clinician_response] if r.clinician_response else [])
        for r in scored
    }
    scored = [r for r in scored if refs[r.instruction_id]]
    if not scored:
        raise MedalignError("no ranked model response has a reference answer to score against")
    similarity = EmbeddingSimilarity()
    f1 = similarity.score([r.response for r in scored], [refs[r.instruction_id] for r in scored])
    metric_scores = {
        "rouge_l": {(r.instruction_id, r.model_name): rouge_l(r.response, refs[r.instruction_id]) for r in scored},
        "embedding_f1": {(r.instruction_id, r.model_name): float(s) for r, s in zip(scored, f1)},
    }
    return {
        name: kendall_agreement(scored, scores, n_resamples=n_resamples, seed=seed)
        for name, scores in metric_scores.items()
    }
