"""Patient-clustered statistics, coverage variants and answer presence (no data or model needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.metrics import bootstrap_interval
from medalign_rag.evaluation.statistics import (
    answer_presence,
    clustered_mean,
    coverage_variants,
    evidence_groups,
    macro_mean,
    paired_difference,
)
from medalign_rag.records.model import Instruction


def _clustered_data(seed: int = 3, patients: int = 30, per_patient: int = 20):
    """Questions whose scores share a strong per-patient effect (as coverage does: some records are long)."""
    rng = np.random.default_rng(seed)
    values, clusters = [], []
    for patient in range(patients):
        level = rng.uniform(0.1, 0.9)
        for _ in range(per_patient):
            values.append(float(np.clip(level + rng.normal(0, 0.05), 0, 1)))
            clusters.append(f"p{patient}")
    return values, clusters


def test_clustered_interval_is_wider_than_the_naive_one_and_deterministic():
    values, clusters = _clustered_data()
    clustered = clustered_mean(values, clusters, n_resamples=1000, seed=0)
    _, naive_lo, naive_hi = bootstrap_interval(values, n_resamples=1000, seed=0)
    assert clustered.mean == pytest.approx(np.mean(values))
    assert clustered.lo < clustered.mean < clustered.hi
    # Resampling 30 patients, not 600 questions: the interval must be several times wider.
    assert (clustered.hi - clustered.lo) > 2.5 * (naive_hi - naive_lo)
    assert clustered == clustered_mean(values, clusters, n_resamples=1000, seed=0)
    assert clustered != clustered_mean(values, clusters, n_resamples=1000, seed=1)
    assert (clustered.n_items, clustered.n_clusters) == (600, 30)


def test_macro_mean_weighs_patients_equally():
    values = [1.0] * 9 + [0.0]  # patient a: nine questions all 1; patient b: one question, 0
    clusters = ["a"] * 9 + ["b"]
    assert clustered_mean(values, clusters).mean == pytest.approx(0.9)
    macro = macro_mean(values, clusters, n_resamples=500)
    assert macro.mean == pytest.approx(0.5)
    assert macro.lo <= 0.5 <= macro.hi and macro.n_clusters == 2


def test_none_values_are_left_out_and_empty_is_nan():
    estimate = clustered_mean([None, 1.0, 0.0, None], ["a", "a", "b", "b"], n_resamples=200)
    assert estimate.mean == 0.5 and estimate.n_items == 2
    empty = clustered_mean([None], ["a"])
    assert math.isnan(empty.mean) and empty.n_items == 0
    with pytest.raises(MedalignError, match="pair up"):
        clustered_mean([1.0, 2.0], ["a"])
    with pytest.raises(MedalignError, match="finite"):
        clustered_mean([float("nan")], ["a"])


def test_paired_difference_verdicts():
    values, clusters = _clustered_data()
    items = [f"q{i}" for i in range(len(values))]
    cluster_of = dict(zip(items, clusters))
    baseline = dict(zip(items, values))
    improved = {item: value + 0.05 for item, value in baseline.items()}
    same = dict(baseline)
    same["q0"] = baseline["q0"] + 0.01
    same["q1"] = baseline["q1"] - 0.01
    better = paired_difference(improved, baseline, cluster_of, n_resamples=500)
    assert better.verdict == "better" and better.mean == pytest.approx(0.05) and better.lo > 0
    worse = paired_difference(baseline, improved, cluster_of, n_resamples=500)
    assert worse.verdict == "worse" and worse.hi < 0
    tie = paired_difference(same, baseline, cluster_of, n_resamples=500)
    assert tie.verdict == "tie" and tie.lo <= 0 <= tie.hi
    # Only items present in both count.
    partial = paired_difference({"q0": 1.0, "q1": None}, {"q0": 0.0, "q1": 1.0, "q2": 0.0}, cluster_of)
    assert partial.n_items == 1 and partial.mean == 1.0
    with pytest.raises(MedalignError, match="cluster"):
        paired_difference({"zz": 1.0}, {"zz": 0.0}, cluster_of)


def test_coverage_variants_and_groups():
    groups = [["adm-1", "dis-1"], ["lab-5"], ["rx-1", "rx-2"]]
    assert coverage_variants(groups, ["dis-1", "rx-2"]) == {"share": pytest.approx(2 / 3), "all": 0.0, "any": 1.0}
    assert coverage_variants(groups, ["dis-1", "rx-2", "lab-5"]) == {"share": 1.0, "all": 1.0, "any": 1.0}
    assert coverage_variants(groups, []) == {"share": 0.0, "all": 0.0, "any": 0.0}
    assert coverage_variants([], ["x"]) is None
    plain = Instruction(instruction_id="i", patient_id="p", question="q?", evidence_event_ids=["a", "b", "a"])
    assert evidence_groups(plain) == [["a"], ["b"]]
    grouped = plain.model_copy(update={"metadata": {"evidence_groups": [["adm-1", "dis-1"]],
                                                    "evidence_groups_legacy": [["adm-1"]]}})
    assert evidence_groups(grouped) == [["adm-1", "dis-1"]]
    assert evidence_groups(grouped, legacy=True) == [["adm-1"]]
    assert evidence_groups(plain, legacy=True) == [["a"], ["b"]]


CONTEXT = """<encounter type="inpatient" start_timestamp="2133-12-30 10:00:00" end_timestamp="2134-01-02 12:00:00">
  <events>
    <entry timestamp="2133-12-31 02:00:00">
      <event type="measurement" name="Glucose" unit="mg/dL" value="115">reference range 70-100; abnormal</event>
      <event type="drug_exposure" name="Docusate Sodium" unit="mg" code="NDC/1">100</event>
      <event type="observation" name="Patient demographics">gender Male; age 52 in 2133</event>
    </entry>
  </events>
</encounter>"""


def _fhir(question: str, template: str, answer) -> Instruction:
    return Instruction(instruction_id="q", patient_id="p", question=question,
                       metadata={"true_answer": answer, "template": template})


@pytest.mark.parametrize(
    ("template", "answer", "expected"),
    [
        ("What was the [time_filter_exact1] measured value of a {lab_name} lab test of patient {patient_id}?",
         [[115.0]], 1.0),
        ("What was the [time_filter_exact1] measured value of a {lab_name} lab test of patient {patient_id}?",
         [[116.0]], 0.0),
        ("What was the [time_filter_exact1] measured value of a {lab_name} lab test of patient {patient_id}?",
         [[12.0]], 0.0),  # "12" only inside a timestamp: not a value
        ("What was the [time_filter_exact1] measured value of a {lab_name} lab test of patient {patient_id}?",
         [[70.0]], 0.0),  # only inside a reference range: not a value
        ("What was the dose of {drug_name} that patient {patient_id} was [time_filter_exact1] prescribed?",
         [["100"]], 1.0),
        ("When was the [time_filter_exact1] time that patient {patient_id} received a {lab_name} lab test?",
         [["2133-12-31 02:00:00"]], 1.0),
        ("When was the [time_filter_exact1] time that patient {patient_id} received a {lab_name} lab test?",
         [["2133-12-31 03:00:00"]], 0.0),
        ("What was the name of the drug that patient {patient_id} was prescribed?",
         [["docusate  sodium"], ["Senna"]], 0.5),
        ("What is the gender of patient {patient_id}?", [["M"]], 1.0),
        ("What is the gender of patient {patient_id}?", "[['F']]", 0.0),
        # Not lookups, or nothing to look for: no presence figure.
        ("Count the number of drugs patient {patient_id} were prescribed.", [[1]], None),
        ("Has_verb patient {patient_id} received any lab test?", [[1]], None),
        ("What was the total volume of output that patient {patient_id} had?", [[115]], None),
        ("What was the name of the drug that patient {patient_id} was prescribed?", [], None),
    ],
)
def test_answer_presence(template, answer, expected):
    assert answer_presence(_fhir("a question?", template, answer), CONTEXT) == expected


def test_answer_presence_needs_a_structured_gold_answer():
    free_text = Instruction(instruction_id="q", patient_id="p", question="Summarize the stay.",
                            reference_answers=["A long stay."])
    assert answer_presence(free_text, CONTEXT) is None


def test_one_patient_gives_no_interval_and_no_verdict():
    single = clustered_mean([0.2, 0.4, 0.9], ["a", "a", "a"])
    assert single.mean == pytest.approx(0.5) and math.isnan(single.lo) and math.isnan(single.hi)
    diff = paired_difference({"q1": 1.0, "q2": 1.0}, {"q1": 0.0, "q2": 0.5}, {"q1": "a", "q2": "a"})
    assert diff.mean == pytest.approx(0.75) and diff.verdict == "n/a"
