"""General handling of clinicians' shorthand (issue 13, item 0): a stopword in a noun's place ("total out"),
abbreviations typed without their inner punctuation ("dc" for "d/c"), an ambiguous abbreviation read by the meaning
this record holds whole ("Cr"), a discharge or admission with no kind of visit read as the hospital's, number-sign
ordinals ("#1 icu adm", "value #2"), clippings of this patient's words read from the word as typed ("press",
"doxy"), and generic words for the microbiology class of facts ("cultures", "swab")."""

from datetime import datetime as D, timedelta

import faiss
import numpy as np
import pytest

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.index.store import IndexManifest, PatientIndex
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.retrieval.concepts import MIN_LISTED_CLIPPING, _stemmer, _tokenize, build_concept_table
from medalign_rag.retrieval.cues import normalize_shorthand, parse_cues
from medalign_rag.retrieval.time_cues import VisitCue
from medalign_rag.retrieval.vocabulary import SourceTerm, build_vocabulary, classes_named
from medalign_rag.tokenization import default_counter

START = D(2146, 3, 1, 8)
NAMES = {
    EventKind.measurement: ["Foley", "Void", "Chest Tube #1", "Chest Tube #2", "Heart Rate", "Creatinine", "Creatinine, Urine", "GCS - Verbal Response",
                            "Outpatient Visit Count"],
    EventKind.drug: ["Heparin", "Warfarin"],
    EventKind.visit: ["Hospital admission", "Hospital discharge", "ICU discharge"],
}


def index(names_by_kind: dict[EventKind, list[str]] | None = None) -> PatientIndex:
    events = []
    for kind, names in (names_by_kind or NAMES).items():
        for number, name in enumerate(names):
            events.append(Event(event_id=f"{kind.value}{number}", kind=kind, name=name, value="1",
                                timestamp=START + timedelta(hours=number)))
    record = PatientRecord(patient_id="p1", encounters=[Encounter(
        encounter_id="e1", type="inpatient", start=START, end=START + timedelta(days=3), events=events)])
    chunks = chunk_record(record, default_counter(), ChunkingSettings(max_tokens=300))
    manifest = IndexManifest(patient_id="p1", embedding_model="none", dimension=4,
                             chunking=ChunkingSettings(max_tokens=300), window_tokens=256, overlap_tokens=32,
                             token_counter="cl100k_base", source_sha256="x", n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


@pytest.fixture(scope="module")
def table():
    vocabulary = build_vocabulary()
    for label in ("Foley", "Void", "Chest Tube #1", "Chest Tube #2"):  # as MIMIC's d_items says: these labels live in the output table
        vocabulary.add_source_term(SourceTerm(label, (), "Output", "output"))
    return build_concept_table(index(), vocabulary)


def matched(table, query: str) -> list[str]:
    expansions = table.vocabulary.meanings_in(query, visits=False)
    return [table.concepts[m.concept].name for m in table.match(query, expansions=expansions)]


def test_a_stopword_in_a_nouns_place_reads_as_the_patients_word_it_shortens(table):
    # both of this patient's words "out" shortens are readings, weighed alike (as any clipping's)
    assert table.noun_position_clippings("total out") == {"out": ("outpati", "output")}
    assert {"Foley", "Void", "Chest Tube #1", "Chest Tube #2"} <= set(matched(table, "total out"))
    assert {"Foley", "Void"} <= set(matched(table, "total volume out"))
    assert "out" in table.noun_position_clippings("void out amount")  # after a word of this patient's names
    assert matched(table, "void out amount")[0] == "Void"
    # after a verb it is the function word it usually is
    assert table.noun_position_clippings("find out heparin") == {}
    assert table.noun_position_clippings("carried out") == {}
    assert matched(table, "find out heparin") == ["Heparin"]
    assert matched(table, "carried out") == []


def test_an_abbreviation_typed_without_its_inner_punctuation_reads_as_the_listed_form():
    vocabulary = build_vocabulary()
    assert {"discharge", "discontinue"} <= set(vocabulary.meanings("dc"))
    assert "intake and output" in vocabulary.meanings("io")  # the list has "i&o"
    assert "intake and output" in vocabulary.meanings("I/O")
    # typed punctuation the list knows is kept: "d/c" is not the unrelated "DC"
    assert "dendritic cell" in vocabulary.meanings("dc")
    assert "dendritic cell" not in vocabulary.meanings("d/c")
    # a dictionary read later (a source's own abbreviation column) is found without its punctuation too
    assert vocabulary.meanings("qz") == ()
    vocabulary.add_abbreviation("q/z", "quizzical zone")
    assert vocabulary.meanings("qz") == ("quizzical zone",)


def test_an_ambiguous_abbreviation_is_read_by_the_meaning_this_record_holds_whole(table):
    # "Cr" is listed as clinical response, complete response, controlled release and creatinine; only creatinine
    # is a concept here, and "response" alone must not pull in "GCS - Verbal Response"
    meanings = table.vocabulary.meanings("Cr")
    assert {"clinical response", "Creatinine"} <= set(meanings)
    assert table.held_whole([*meanings, "drug"], "last Cr") == ["Creatinine", "drug"]
    # an abbreviation with one meaning keeps it though no concept holds it whole
    assert table.held_whole(["urine output"], "total UOP") == ["urine output"]
    names = matched(table, "last Cr")
    assert names and names[0] == "Creatinine"
    assert "GCS - Verbal Response" not in names
    # a meaning whose words differ from the concept's only by inflection is held ("urinary" / "Urine")
    assert table._holds_whole("creatinine urinary") and not table._holds_whole("clinical response")


def test_the_plural_of_a_clipping_reads_as_the_clipping(table):
    assert table.clippings("hearts") == ()  # "heart" is a word of this patient's names, not a clipping
    assert table.clippings("creats") == ("creatinin",)
    assert matched(table, "last creats")[0] in {"Creatinine", "Creatinine, Urine"}


def test_the_plural_of_a_short_abbreviation_reads_as_its_singular():
    vocabulary = build_vocabulary()
    assert "saturation" in vocabulary.meanings("sats")
    assert vocabulary.meanings("less") == () and vocabulary.meanings("days") == ()
    # a kind's shortening keeps its kind reading, not the list's other meanings of "med"
    assert vocabulary.meanings("meds") == ()
    assert "drug" in vocabulary.meanings_in("any meds", visits=False)


@pytest.mark.parametrize("question, reading", [
    ("When was 1st d/c time for pt 1?", "first hospital discharge time"),
    ("last dc date", "last hospital discharge date"),
    ("When was patient 1's first discharge?", "first hospital discharge"),
    ("When did pt 1 get admitted for last time?", "admitted to the hospital for last time"),
    ("was pt 1 admitted in 2150", "admitted to the hospital in 2150"),
])
def test_a_discharge_or_admission_without_a_kind_of_visit_is_the_hospitals(question, reading):
    assert reading in normalize_shorthand(question, None)


@pytest.mark.parametrize("question, kept", [
    ("icu discharge time", "icu discharge"),
    ("last hospital discharge", "last hospital discharge"),
    ("discharged from the hospital", "discharged from the hospital"),
    ("was pt admitted to ED", "admitted to emergency department"),
    ("were the meds d/c'd", "d/c'd"),  # said of drugs, "d/c" is a discontinuation
])
def test_a_named_kind_of_visit_or_a_drug_keeps_its_reading(question, kept):
    normalized = normalize_shorthand(question, None)
    assert kept in normalized and "hospital hospital" not in normalized


def test_an_apostrophe_suffix_is_not_a_visit_word():
    assert "emergency" not in normalize_shorthand("any meds dc'ed?", None)


def test_shorthand_discharge_reaches_the_hospital_discharge(table):
    cues = parse_cues("When was 1st d/c time for pt 10007058?", None)
    assert cues.direction == "first"
    assert matched(table, cues.content_query)[0] == "Hospital discharge"
    assert "ICU discharge" not in matched(table, cues.content_query)


def test_shortened_words_are_spelled_out_as_this_patients_names_spell_them(table):
    # for text retrieval, which does not read clippings itself
    assert table.reading_words("last creat") == ["creatinine"]
    assert table.reading_words("total out") == ["outpatient", "output"]
    assert table.reading_words("find out heparin") == []
    assert table.reading_words("heart rate") == []


def test_a_number_sign_keeps_its_number(table):
    scores = {table.concepts[m.concept].name: m.score for m in table.match("chest tube #2")}
    assert scores["Chest Tube #2"] > scores.get("Chest Tube #1", 0.0)  # without the number they would tie
    assert matched(table, "total chest tube #1 out")[0] == "Chest Tube #1"
    assert "out" in table.noun_position_clippings("total chest tube #1 out")


# -- number-sign ordinals -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("question, visits, direction", [
    ("hr on the #1 icu admission", (VisitCue("first", "icu", "first icu stay"),), None),
    ("when was hr #1 recorded", (), "first"),
    ("value #2 of hr on the last adm", (VisitCue("last", "hospital", "last hospital visit"),), "first"),
    ("the #2 value of hr", (), "first"),
    ("the 2nd value of hr", (), "first"),
    ("value #2 to last of hr", (), "recent"),  # counted from the end
    ("2nd to last hr", (), "recent"),
])
def test_a_number_sign_before_a_small_number_is_an_ordinal(question, visits, direction):
    cues = parse_cues(question, None)
    assert cues.visits == visits
    assert cues.direction == direction
    assert "#" not in cues.content_query
    if direction == "first":
        assert "second" not in cues.content_query
    assert "hr" in cues.content_query.split()


def test_a_number_sign_ordinal_reads_like_the_written_ordinal():
    assert "second hospital visit" in normalize_shorthand("last wbc on the #2 hosp", None)
    assert "first icu stay" in normalize_shorthand("#1 icu admission", None)
    assert "first icu stay" in normalize_shorthand("#1icu admission", None)
    # not an ordinal: a larger number, a decimal, a number sign inside a word
    for kept in ("room #12", "dose #1.5", "bed#2x", "pt #3 last hr"):
        assert "#" in normalize_shorthand(kept, None)


def test_a_number_sign_after_a_word_this_patient_numbers_stays_part_of_the_name(table):
    assert table.numbered_words() == frozenset({"tube"})
    cues = parse_cues("total chest tube #1 out", None, table.numbered_words())
    assert cues.direction is None and "#1" in cues.content_query
    assert matched(table, cues.content_query)[0] == "Chest Tube #1"
    # without this patient's names the same words read "#1" as "first"
    assert parse_cues("total chest tube #1 out", None).direction == "first"
    # a word the patient's names do not number keeps the ordinal reading ("creatinine #2": its second value)
    assert parse_cues("creatinine #2", None, table.numbered_words()).direction == "first"


# -- clippings of this patient's words ----------------------------------------------------------------------------

VITALS = {
    EventKind.measurement: ["Arterial Blood Pressure systolic", "Arterial Blood Pressure mean",
                            "Non Invasive Blood Pressure systolic", "Mean Airway Pressure", "Respiratory Rate",
                            "Heart Rate", "Microbiology test: URINE CULTURE", "Microbiology test: MRSA SCREEN",
                            "Organism in URINE CULTURE (URINE)", "Potassium"],
    EventKind.drug: ["Doxycycline Hyclate", "Heparin"],
}


@pytest.fixture(scope="module")
def vitals():
    return build_concept_table(index(VITALS), build_vocabulary())


@pytest.mark.parametrize("word", ["pressure", "respiratory", "doxycycline", "systolic", "arterial", "invasive"])
def test_every_clipping_of_four_or_more_letters_reads_as_the_word(vitals, word):
    stem = _stemmer().stemWord(word)
    for length in range(4, len(word)):
        clipped = word[:length]
        token = _tokenize([clipped], return_ids=False)[0][0]
        assert token == stem or stem in vitals.typed_clippings(clipped).get(token, ()), clipped


def test_a_clipping_is_read_from_the_word_as_typed_not_its_stem(vitals):
    # "doxy" stems to "doxi", no prefix of "doxycyclin"; "pressu" is longer than nothing but "pres" is listed
    assert _stemmer().stemWord("doxy") == "doxi"
    assert vitals.typed_clippings("last doxy") == {"doxi": ("doxycyclin",)}
    assert matched(vitals, "last doxy") == ["Doxycycline Hyclate"]


def test_a_listed_abbreviation_of_four_letters_no_concept_holds_reads_as_a_clipping(vitals):
    listed = vitals.vocabulary.meanings("pres")
    assert listed  # the abbreviation list knows "pres"; none of its meanings is a concept here
    assert "pressur" in vitals.clippings("pres")
    assert vitals.held_whole(list(listed), "last pres") == []  # its list meanings give way to the clipping
    # a short one stays with the list when shorter than the floor
    if MIN_LISTED_CLIPPING > 3:
        assert vitals.clippings("art") == ()
    else:
        assert "arteri" in vitals.clippings("art")


@pytest.mark.parametrize("query, expected", [
    ("systolic press", {"Arterial Blood Pressure systolic", "Non Invasive Blood Pressure systolic"}),
    ("resp rate", {"Respiratory Rate"}),
    ("mean airway press", {"Mean Airway Pressure"}),
])
def test_clipped_words_reach_the_concepts_they_shorten(vitals, query, expected):
    names = matched(vitals, query)
    assert set(names[:len(expected)]) == expected
    assert "Heart Rate" not in names[:len(expected)]


def test_clippings_are_spelled_out_for_dense_and_text_retrieval(vitals):
    assert vitals.reading_words("systolic press") == ["pressure"]
    assert vitals.reading_words("resp rate") == ["respiratory"]


# -- words for the microbiology class of facts --------------------------------------------------------------------


@pytest.mark.parametrize("question", ["any cultures since admission?", "last swab", "specimens sent",
                                      "urine cx cultured?"])
def test_words_for_cultures_name_the_microbiology_class(question):
    assert classes_named(question) == ["microbiology"]
    assert "microbiology" in build_vocabulary().meanings_in(question, visits=False)


def test_words_that_are_not_about_cultures_name_no_class():
    assert classes_named("any meds since admission") == []
    assert classes_named("cultural background") == []
    assert "microbiology" not in build_vocabulary().meanings_in("last potassium", visits=False)


def test_a_swab_reaches_microbiology_results_whose_names_say_neither_word(vitals):
    names = matched(vitals, "last swab")
    assert "Microbiology test: MRSA SCREEN" in names  # the name holds neither "swab" nor "culture"
    assert "Potassium" not in names and "Heparin" not in names
    names = matched(vitals, "any cultures")
    assert names[0] == "Microbiology test: URINE CULTURE" and "Potassium" not in names


def test_a_class_word_that_is_part_of_a_name_here_is_read_as_that_name(vitals):
    # "urine culture" names "Microbiology test: URINE CULTURE": not every microbiology result
    assert vitals.named_classes("first urine culture") == {"microbiology"}
    assert vitals.named_classes("first sputum culture") == set()  # no such name: the class reading stays
    assert vitals.named_classes("any cultures") == set()
    names = matched(vitals, "organism in the first urine culture")
    assert "Microbiology test: MRSA SCREEN" not in names


def test_a_whole_word_is_no_clipping_of_its_own_inflections():
    # "medication" and "Medications" share the stem "medic": no extra reading that would count the word twice
    table = build_concept_table(index({EventKind.measurement: ["Home Medications", "Pressure"]}), build_vocabulary())
    assert table.typed_clippings("medication pressure") == {}
    assert table.reading_words("medication pressure") == []
    assert table.typed_clippings("medic press") == {"press": ("pressur",)}  # "medic" is the stem itself
    assert table.typed_clippings("any meds") == {}  # a kind's word reads as its kind, not as "medications"
