"""Matching free-text answers to FHIR-AgentBench gold rows (strings modelled on dev.csv)."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date, datetime

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.answer_match import (
    AnswerKind,
    answer_matches,
    normalize_gold,
    parse_true_answer,
)


# --- parsing and classifying gold rows -------------------------------------------------------------------------


def test_parse_python_literal_and_numpy_print():
    assert parse_true_answer("[['2133-12-31 02:00:00']]") == [["2133-12-31 02:00:00"]]
    assert parse_true_answer("[]") == []
    # dev.csv writes some multi-row answers the way numpy prints a 2-D array: no commas between rows.
    assert parse_true_answer("[[115.8]\n [117.7]]") == [[115.8], [117.7]]
    assert parse_true_answer("[[67.]\n [42.]]") == [[67.0], [42.0]]
    assert parse_true_answer("[['Aspirin']\n ['irbesartan']]") == [["Aspirin"], ["irbesartan"]]


def test_parse_rejects_garbage_with_location():
    with pytest.raises(MedalignError, match=r"dev\.csv:7: true_answer"):
        parse_true_answer("SELECT 1", path="dev.csv", line=7)


@pytest.mark.parametrize(
    ("rows", "kind", "values"),
    [
        ([["2133-12-31 02:00:00"]], AnswerKind.datetime, (datetime(2133, 12, 31, 2, 0),)),
        ([["2133-12-31"]], AnswerKind.date, (date(2133, 12, 31),)),
        ([[3075]], AnswerKind.number, (3075.0,)),
        ([[331.0]], AnswerKind.number, (331.0,)),
        ([["400"]], AnswerKind.number, (400.0,)),  # numbers stored as text are numbers
        ([["aspirin"], ["heparin"]], AnswerKind.text, ("aspirin", "heparin")),
        ([], AnswerKind.none, ()),
        ([[None]], AnswerKind.none, ()),  # SQL NULL of an aggregate over nothing
        ([["1-2"]], AnswerKind.text, ("1-2",)),  # a dose range is not a number
    ],
)
def test_normalize_gold_kinds(rows, kind, values):
    normalized = normalize_gold(rows)
    assert normalized.kind is kind
    assert normalized.values == values


def test_zero_one_is_yes_no_or_count_by_template_or_question():
    yes_template = "Has_verb patient {patient_id} received any procedure [time_filter_global1]?"
    count_template = "Count the number of ICU visits of patient {patient_id} [time_filter_global1]."
    assert normalize_gold([[1]], template=yes_template).kind is AnswerKind.yes_no
    assert normalize_gold([[1]], template=count_template).kind is AnswerKind.number
    questions = {
        "Has patient 10023239 had any medication prescribed since 05/2137?": AnswerKind.yes_no,
        "In 07/2178 did patient 10016742 undergo a creatinine, urine test?": AnswerKind.yes_no,
        "Since 2100, was patient 10001217 admitted to the emergency room?": AnswerKind.yes_no,
        "Can you tell me if the emesis event did occur to patient 10025612 on 10/02/this year?": AnswerKind.yes_no,
        "How frequently was milk of magnesia prescribed to patient 10005348?": AnswerKind.number,
        "What was the first dose of glucagon that patient 10023239 was prescribed?": AnswerKind.number,
    }
    for question, kind in questions.items():
        assert normalize_gold([[1]], question=question).kind is kind, question
    ambiguous = normalize_gold([[1]])
    assert ambiguous.kind is AnswerKind.yes_no and ambiguous.also_count
    # A measured value of 1.0 is a number, not "yes".
    assert normalize_gold([[1.0]]).kind is AnswerKind.number


# --- matching predictions ----------------------------------------------------------------------------------------

DATETIME_GOLD = [["2114-06-20 11:09:00"]]


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The last microbiology exam was on 2114-06-20 at 11:09.", True),
        ("2114-06-20T11:09:00", True),
        ("It was on June 20, 2114, 11:09 AM.", True),
        ("Collected 06/20/2114 11:09.", True),
        ("20th of June 2114 at 11:09:00", True),
        ("at 11:09 on Jun. 20, 2114", True),
        ("On 2114-06-20.", False),  # the gold has a time of day: the day alone is not enough
        ("2114-06-20 12:09", False),
        ("June 20, 2114 at 11:09 PM", False),
        ("2114-06-21 11:09", False),
        ("06/20/2115 11:09", False),
        # The 11:09 belongs to the day before; the gold day is given without a time.
        ("2114-06-19 11:09, then again on 2114-06-20", False),
    ],
)
def test_datetime_answers(prediction, expected):
    assert answer_matches(prediction, DATETIME_GOLD) is expected


def test_day_alone_is_enough_when_asked_or_when_gold_is_midnight():
    assert answer_matches("On 2114-06-20.", DATETIME_GOLD, require_time=False)
    assert answer_matches("December 31, 2133", [["2133-12-31 00:00:00"]])
    assert answer_matches("12/31/2133", [["2133-12-31"]])


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("Yes, the patient underwent the procedure in the first visit.", [[1]], True),
        ("**Yes** - an ultrasonography was recorded.", [[1]], True),
        ("Answer: yes", [[1]], True),
        ("No, there is no record of it.", [[1]], False),
        ("No.", [[0]], True),
        ("Yes.", [[0]], False),
        ("The patient did receive it.", [[1]], False),  # no leading yes/no word
    ],
)
def test_yes_no_answers(prediction, gold, expected):
    template = "Has_verb patient {patient_id} received a {procedure_name} procedure [time_filter_global1]?"
    assert answer_matches(prediction, gold, template=template) is expected


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The total void output since 08/11/2146 was 3,075 mL.", [[3075]], True),
        ("Total: 3075 mL", [[3075]], True),
        ("Total: 3100 mL", [[3075]], True),  # within 1%
        ("Total: 3200 mL", [[3075]], False),
        ("The weight differs by 0.1 kg.", [[0.1]], True),
        ("The weight differs by 0.11 kg.", [[0.1]], True),  # within 0.01 absolute
        ("The weight differs by 0.2 kg.", [[0.1]], False),
        ("The last ICU stay lasted 2.49 days.", [[2.48891204]], True),
        ("The diastolic pressure changed by -14 mmHg.", [[-14.0]], True),
        ("The diastolic pressure changed by 14 mmHg.", [[-14.0]], False),
        ("The last ibuprofen suspension dose was 400 mg.", [["400"]], True),
        # Numbers inside dates do not count as answers.
        ("On 2146-12-31 the value was 7.", [[12]], False),
        ("Monthly weights: 115.8 kg (Sep) and 117.7 kg (Oct).", "[[115.8]\n [117.7]]", True),
        ("Monthly weights: 115.8 kg.", "[[115.8]\n [117.7]]", False),
    ],
)
def test_number_answers(prediction, gold, expected):
    assert answer_matches(prediction, gold) is expected


def test_counts_accept_words_and_nothing_found_for_zero():
    count = "Count the number of times that patient {patient_id} were prescribed {drug_name}."
    assert answer_matches("Milk of magnesia was prescribed once.", [[1]], template=count)
    assert answer_matches("Three ICU visits.", [[3]], template=count)
    assert answer_matches("The patient had no ICU visits.", [[0]], template=count)
    assert not answer_matches("Yes", [[1]], template=count)


def test_ambiguous_zero_one_accepts_either_reading():
    assert answer_matches("Yes.", [[1]])
    assert answer_matches("It was prescribed 1 time.", [[1]])
    assert not answer_matches("It was prescribed 2 times.", [[1]])


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The drugs were Aspirin and Irbesartan.", [["Aspirin"], ["irbesartan"]], True),
        ("Only aspirin was prescribed.", [["Aspirin"], ["irbesartan"]], False),
        ("sodium chloride 0.9% flush", [["Sodium Chloride 0.9%  Flush"]], True),
        (
            "Organism: Candida albicans, presumptive identification.",
            [["CANDIDA ALBICANS, PRESUMPTIVE IDENTIFICATION"]],
            True,
        ),
        ("Ipratropium albuterol neb", [["Ipratropium-Albuterol Neb"]], True),
        ("HYDROmorphone (Dilaudid) 2 mg", [["HYDROmorphone (Dilaudid)"]], True),
        ("Heparin Sodium", [["Heparin"]], True),
        ("Enoxaparin", [["Heparin"]], False),  # whole words only
        ("The patient is male.", [["M"]], True),
        ("The patient is female.", [["M"]], False),
        ("Gender: F", [["F"]], True),
        (
            "Midazolam, fentanyl citrate and 0.9% sodium chloride via IV.",
            "[['Midazolam']\n ['Fentanyl Citrate']\n ['0.9% Sodium Chloride']]",
            True,
        ),
    ],
)
def test_text_answers(prediction, gold, expected):
    assert answer_matches(prediction, gold) is expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("No record of an SpO2 value on 10/01 this year.", True),
        ("None.", True),
        ("The requested test was not found in the record.", True),
        ("There were no insulin prescriptions in 05/2150.", True),
        ("I could not find any output events on that day.", True),
        ("The patient did not have a sodium test since 07/2185.", True),
        ("The last SpO2 was 97%.", False),
        ("Heparin.", False),
    ],
)
def test_nothing_found_answers(prediction, expected):
    assert answer_matches(prediction, [], question="What was the last value of patient 10025612's spo2?") is expected
    assert answer_matches(prediction, [[None]]) is expected


def test_prediction_must_be_text():
    with pytest.raises(MedalignError):
        answer_matches(None, [[1]])  # type: ignore[arg-type]


# --- every real dev.csv answer ----------------------------------------------------------------------------------


def _render(value, kind: AnswerKind) -> str:
    """How a careful model might phrase one gold value."""
    if kind is AnswerKind.datetime:
        return value.strftime("%B %d, %Y at %H:%M")
    if kind is AnswerKind.date:
        return value.strftime("%m/%d/%Y")
    if kind is AnswerKind.number:
        return f"{value:.4g}"
    return str(value).upper()


@pytest.mark.shared_data
def test_every_dev_answer_is_parsed_and_matches_a_rendering_of_itself(shared_data):
    path = shared_data / "fhir_agentbench" / "dev.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kinds: Counter[AnswerKind] = Counter()
    for row in rows:
        gold = normalize_gold(row["true_answer"], question=row["question"], template=row["template"])
        kinds[gold.kind] += 1
        if gold.kind is AnswerKind.none:
            right, wrong = "No record was found.", "The value was 42."
        elif gold.kind is AnswerKind.yes_no:
            right, wrong = ("Yes." if gold.values[0] else "No."), ("No." if gold.values[0] else "Yes.")
        else:
            right = "The answer: " + "; ".join(_render(v, k) for v, k in zip(gold.values, gold.value_kinds)) + "."
            wrong = "The answer: 2000-01-01 00:00; 123456789; unrelated."
        assert answer_matches(right, gold), (row["question_id"], row["true_answer"], right)
        assert not answer_matches(wrong, gold), (row["question_id"], row["true_answer"], wrong)
    # Every kind the benchmark uses is present (the split has 1,784 questions).
    assert {AnswerKind.yes_no, AnswerKind.number, AnswerKind.datetime, AnswerKind.text, AnswerKind.none} <= set(kinds)
    assert sum(kinds.values()) == len(rows)


# --- the strict matcher ----------------------------------------------------------------------------------------

from medalign_rag.evaluation.answer_match import (  # noqa: E402
    ANSWER_MATCHERS,
    answer_matches_strict,
    question_form,
)

COUNT_DRUG = "Count the number of times that patient {patient_id} were prescribed {drug_name} [time_filter_global1]."
HAS_DRUG = "Has_verb patient {patient_id} been prescribed {drug_name} [time_filter_global1]?"
DOSE = "What was the dose of {drug_name} that patient {patient_id} was [time_filter_exact1] prescribed [time_filter_global1]?"
WHEN_MICRO = "When was the [time_filter_exact1] microbiology test of patient {patient_id} [time_filter_global1]?"
DRUG_NAMES = "What was the name of the drug that patient {patient_id} was [time_filter_exact1] prescribed [time_filter_global1]?"


def test_issue_counter_example_is_wrong_strictly_but_right_leniently():
    answer = "No, the patient received 1 mg of lorazepam instead."
    assert not answer_matches_strict(answer, [[1]], template=COUNT_DRUG)
    assert answer_matches(answer, [[1]], template=COUNT_DRUG)  # the lenient variant finds "1" anywhere


@pytest.mark.parametrize(
    ("answer", "gold", "template", "expected"),
    [
        ("1", [[1]], COUNT_DRUG, True),
        ("The patient was prescribed lorazepam once.", [[1]], COUNT_DRUG, True),
        ("Lorazepam was prescribed 3 times (1 mg each).", [[1]], COUNT_DRUG, False),  # the claim is 3
        ("None: it was never prescribed.", [[0]], COUNT_DRUG, True),
        ("Yes.", [[1]], COUNT_DRUG, False),  # a count question is not answered by yes
        ("Yes, lorazepam was prescribed.", [[1]], HAS_DRUG, True),
        ("1", [[1]], HAS_DRUG, False),  # ... and a yes/no question not by a number
        ("No, it was not.", [[0]], HAS_DRUG, True),
        ("The dose was 400 mg, later 200 mg.", [["400"]], DOSE, True),
        ("The dose was 200 mg; an earlier order was 400 mg.", [["400"]], DOSE, False),  # 400 is not the claim
        ("No dose of 400 mg is recorded.", [["400"]], DOSE, False),
        ("2114-06-20 11:09", [["2114-06-20 11:09:00"]], WHEN_MICRO, True),
        ("On 2114-06-19 08:00, and again 2114-06-20 11:09.", [["2114-06-20 11:09:00"]], WHEN_MICRO, False),
        ("No microbiology test was found.", [], WHEN_MICRO, True),
        ("The test was on 2114-06-20.", [], WHEN_MICRO, False),  # empty gold needs an explicit none
        ("Docusate sodium and senna.", [["Docusate Sodium"], ["Senna"]], DRUG_NAMES, True),
        ("Docusate sodium.", [["Docusate Sodium"], ["Senna"]], DRUG_NAMES, False),
        ("None, although senna and docusate sodium were discussed.", [["Docusate Sodium"], ["Senna"]], DRUG_NAMES,
         False),
    ],
)
def test_strict_matching(answer, gold, template, expected):
    assert answer_matches_strict(answer, gold, template=template) is expected


def test_strict_needs_a_template_or_question():
    with pytest.raises(MedalignError, match="template"):
        answer_matches_strict("1", [[1]])
    # The question's wording is enough.
    assert not answer_matches_strict("No, 1 mg.", [[1]], question="How many times was lorazepam prescribed?")
    assert set(ANSWER_MATCHERS) == {"strict", "lenient"}


@pytest.mark.parametrize(
    ("template", "form"),
    [
        (COUNT_DRUG, "count"),
        (HAS_DRUG, "yes_no"),
        (DOSE, "lookup"),
        (WHEN_MICRO, "lookup"),
        ("What was the total volume of output that patient {patient_id} had [time_filter_global1]?", "computed"),
        ("What was the [time_filter_exact1] length of ICU stay of patient {patient_id}?", "computed"),
        ("What was the [agg_function] {lab_name} value of patient {patient_id} [time_filter_global1]?", "computed"),
        ("What is the gender of patient {patient_id}?", "lookup"),
        (None, "unknown"),
    ],
)
def test_question_form(template, form):
    assert question_form(template) == form
