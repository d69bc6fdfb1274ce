"""Kendall's tau agreement between a metric and clinician rankings, on hand-computed examples."""

from __future__ import annotations

import math

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.agreement import kendall_agreement
from medalign_rag.records.model import ModelResponse


def _responses(instruction_id: str, ranks: dict[str, float | None]) -> list[ModelResponse]:
    return [
        ModelResponse(
            instruction_id=instruction_id,
            patient_id="p1",
            question="q",
            model_name=model,
            response=f"answer of {model}",
            rank=rank,
        )
        for model, rank in ranks.items()
    ]


def _scores(instruction_id: str, values: dict[str, float]) -> dict[tuple[str, str], float]:
    return {(instruction_id, model): value for model, value in values.items()}


def test_perfect_and_reverse_agreement():
    responses = _responses("i1", {"a": 1, "b": 2, "c": 3})
    agree = kendall_agreement(responses, _scores("i1", {"a": 0.9, "b": 0.5, "c": 0.1}))
    assert agree.mean == pytest.approx(1.0)
    assert (agree.lo, agree.hi) == pytest.approx((1.0, 1.0))
    disagree = kendall_agreement(responses, _scores("i1", {"a": 0.1, "b": 0.5, "c": 0.9}))
    assert disagree.mean == pytest.approx(-1.0)
    assert disagree.n_instructions == 1


def test_textbook_example_without_ties():
    # Metric scores x = 1..5 for models a..e; clinicians' ranks 3,5,4,1,2, i.e. "goodness" y = -rank.
    # In goodness order y = (3,1,2,5,4) up to a shift. Over the 10 pairs (i<j):
    #   discordant: (a,b) 3>1, (a,c) 3>2, (d,e) 5>4          -> D = 3
    #   concordant: the other 7                               -> C = 7
    # No ties, so tau = (C - D) / 10 = 0.4.
    responses = _responses("i1", {"a": 3, "b": 5, "c": 4, "d": 1, "e": 2})
    result = kendall_agreement(responses, _scores("i1", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}))
    assert result.per_instruction == {"i1": pytest.approx(0.4)}


def test_ties_use_tau_b():
    # Scores x = 1,2,3,4; clinicians tie the two worst (ranks 3,3,2,1 -> goodness 1,1,2,3).
    # Pairs: 6. (a,b) tied in y only; the other 5 are concordant, none discordant.
    # tau-b = (C - D) / sqrt((n0 - n1)(n0 - n2)) = 5 / sqrt((6 - 0)(6 - 1)) = 5 / sqrt(30) ~= 0.9129.
    responses = _responses("i1", {"a": 3, "b": 3, "c": 2, "d": 1})
    result = kendall_agreement(responses, _scores("i1", {"a": 1, "b": 2, "c": 3, "d": 4}))
    assert result.per_instruction["i1"] == pytest.approx(5 / math.sqrt(30))


def test_average_over_instructions_and_skips():
    responses = (
        _responses("textbook", {"a": 3, "b": 5, "c": 4, "d": 1, "e": 2})  # tau 0.4 (above)
        + _responses("perfect", {"a": 1, "b": 2})  # tau 1
        + _responses("alone", {"a": 1})  # one response: skipped
        + _responses("all-tied", {"a": 1, "b": 1, "c": 1})  # clinicians gave no order: skipped
        + _responses("flat-metric", {"a": 1, "b": 2})  # metric gave no order: skipped
        + _responses("unranked", {"a": None, "b": None})  # not reviewed: ignored
    )
    scores = {
        **_scores("textbook", {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}),
        **_scores("perfect", {"a": 2.0, "b": 1.0}),
        **_scores("alone", {"a": 1.0}),
        **_scores("all-tied", {"a": 1.0, "b": 2.0, "c": 3.0}),
        **_scores("flat-metric", {"a": 0.5, "b": 0.5}),
    }
    result = kendall_agreement(responses, scores, n_resamples=500, seed=3)
    assert set(result.per_instruction) == {"textbook", "perfect"}
    assert result.n_instructions == 2
    assert result.mean == pytest.approx((0.4 + 1.0) / 2)
    # Resampling two instructions can only give means of 0.4, 0.7 or 1.0.
    assert 0.4 - 1e-9 <= result.lo <= result.mean <= result.hi <= 1.0 + 1e-9
    again = kendall_agreement(responses, scores, n_resamples=500, seed=3)
    assert (again.lo, again.hi) == (result.lo, result.hi)


def test_missing_score_and_duplicates_are_errors():
    responses = _responses("i1", {"a": 1, "b": 2})
    with pytest.raises(MedalignError, match="no metric score.*'b'"):
        kendall_agreement(responses, _scores("i1", {"a": 1.0}))
    with pytest.raises(MedalignError, match="ranked twice"):
        kendall_agreement(responses + _responses("i1", {"a": 3}), _scores("i1", {"a": 1.0, "b": 2.0}))


def test_nothing_to_score_is_an_error():
    with pytest.raises(MedalignError, match="no instruction"):
        kendall_agreement(_responses("i1", {"a": 1}), _scores("i1", {"a": 1.0}))


def test_metric_agreement_follows_the_clinicians_when_the_metric_does():
    from medalign_rag.evaluation.agreement import metric_agreement

    reference = "The most recent hemoglobin A1c was 8.8% on 2022-12-12."
    answers = {
        "good": "The most recent hemoglobin A1c was 8.8% on 2022-12-12.",
        "close": "Hemoglobin A1c was 8.8 percent.",
        "bad": "The patient has no known allergies.",
    }
    responses = [
        ModelResponse(instruction_id=f"i{k}", patient_id="p", question="q", model_name=name, response=text,
                      rank=rank)
        for k in range(3)
        for rank, (name, text) in enumerate(answers.items(), start=1)
    ]
    results = metric_agreement(responses, {f"i{k}": [reference] for k in range(3)}, n_resamples=100)
    for result in results.values():
        assert result.n_instructions == 3
        assert result.mean == pytest.approx(1.0)
