"""Clinicians' words reach the record: vocabulary from the record source itself, shortened words read against the
patient's own concept names, "pt" before an id, and lay terms through a source's synonym table."""

import json
from datetime import datetime as D, timedelta
from pathlib import Path

import faiss
import numpy as np
import pytest

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.index.builder import IndexSettings
from medalign_rag.index.store import IndexManifest, PatientIndex
from medalign_rag.pipeline import Pipeline
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.records.source_vocabulary import fhir_terminology_terms, source_terms
from medalign_rag.records.sources import open_source
from medalign_rag.retrieval import make_retriever
from medalign_rag.retrieval.concepts import build_concept_table
from medalign_rag.retrieval.cues import parse_cues
from medalign_rag.retrieval.vocabulary import build_vocabulary, packaged_drug_names, vocabulary_for_source
from medalign_rag.tokenization import default_counter
from tests.test_source_meds import hand_made
from tests.test_source_omop import _cdm54

START = D(2146, 3, 1, 8)
NAMES = {
    EventKind.measurement: ["Temperature Fahrenheit", "Temporary Pacemaker Rate", "Weight", "Platelet Count",
                            "Microbiology test: URINE CULTURE", "Microbiology test: BLOOD CULTURE", "Microcytes",
                            "Hematocrit"],
    EventKind.drug: ["Heparin", "Warfarin", "Acetaminophen"],
}


def record() -> PatientRecord:
    events = [Event(event_id="adm", timestamp=START, kind=EventKind.visit, name="Hospital admission")]
    for kind, names in NAMES.items():
        for number, name in enumerate(names):
            for day in range(2):
                events.append(Event(event_id=f"{kind.value}{number}-{day}", kind=kind, name=name, value="1",
                                    timestamp=START + timedelta(days=day, hours=number)))
    return PatientRecord(patient_id="p1", encounters=[Encounter(
        encounter_id="e1", type="inpatient", start=START, end=START + timedelta(days=3), events=events)])


def lexical_index() -> PatientIndex:
    chunks = chunk_record(record(), default_counter(), ChunkingSettings(max_tokens=300))
    manifest = IndexManifest(patient_id="p1", embedding_model="none", dimension=4,
                             chunking=ChunkingSettings(max_tokens=300), window_tokens=256, overlap_tokens=32,
                             token_counter="cl100k_base", source_sha256="x", n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


def matched(table, query: str) -> list[str]:
    expansions = table.vocabulary.meanings_in(query, visits=False)  # as the events strategy matches
    return [table.concepts[m.concept].name for m in table.match(query, expansions=expansions)]


def test_shortened_words_are_read_against_the_patients_own_concept_names():
    from medalign_rag.retrieval.vocabulary import SourceTerm

    vocabulary = build_vocabulary()
    # as MIMIC's d_items does: "Temp" is the label's own abbreviation of "Temporary"
    vocabulary.add_source_term(SourceTerm("Temporary Pacemaker Rate", ("Temp Pacemaker Rate",)))
    table = build_concept_table(lexical_index(), vocabulary)
    assert matched(table, "wgt")[0] == "Weight"  # a contraction: letters in order, no vowel after the first
    assert matched(table, "plts")[0] == "Platelet Count"
    assert matched(table, "hct")[0] == "Hematocrit"
    # a clipping that is also a label word here reads both ways; temperature is not lost to "Temp Pacemaker"
    assert "Temperature Fahrenheit" in matched(table, "max temp")
    # the readings of one clipping are weighed alike: the common one is not outranked by a rare one
    micro = matched(table, "micro")
    assert {"Microbiology test: URINE CULTURE", "Microbiology test: BLOOD CULTURE", "Microcytes"} <= set(micro)
    assert table.clippings("zzz") == () and table.clippings("weight") == ()


@pytest.mark.parametrize("question, content", [
    ("what's wt of pt 10014729 1st in 1st adm?", "wt"),
    ("Show pt. 10029291's last hct", "hct"),
])
def test_pt_before_an_id_is_the_patient(question, content):
    assert parse_cues(question, None).content_query == content


def test_pt_elsewhere_may_be_the_lab():
    assert "pt" in parse_cues("what was the last PT/INR", None).content_query


def test_two_digit_years_read_in_the_century_nearest_before_the_anchor():
    cues = parse_cues("total out since 9/7/46", D(2146, 12, 31))
    assert [(w.start, w.end.year) for w in cues.windows] == [(D(2146, 9, 7), 9999)]
    cues = parse_cues("total out since 9/7/99", D(2146, 12, 31))
    assert cues.windows[0].start == D(2099, 9, 7)


def test_kind_shortenings_read_as_their_kind():
    vocabulary = build_vocabulary()
    assert "drug" in vocabulary.meanings_in("any meds rx'd via po", visits=False)
    assert "diagnosis" in vocabulary.meanings_in("any dx since adm", visits=False)
    # written with a canonical word: nothing added
    assert "drug" not in vocabulary.meanings_in("any medication via po", visits=False)


def _folder_with_synonyms(folder: Path) -> Path:
    write_release_xml(record(), folder / "ehrs" / "p1.xml")
    (folder / "vocabulary").mkdir()
    # a user-supplied lay-term table: read through the source, not a list in the code
    (folder / "vocabulary" / "synonyms.csv").write_text("term,synonym\nHeparin,blood thinner\nWarfarin,blood thinner\n")
    return folder


def test_lay_terms_reach_events_through_the_sources_vocabulary(tmp_path):
    source = open_data_folder(_folder_with_synonyms(tmp_path / "data"))
    assert {t.label for t in source_terms(source)} == {"Heparin", "Warfarin"}
    pipeline = Pipeline(source, IndexSettings(index_dir=tmp_path / "indexes"))
    assert {"Heparin", "Warfarin"} <= set(pipeline.vocabulary.meanings_in("any blood thinner since adm?"))
    index = pipeline.patient_index("p1")
    embedder = pipeline.builder.embedder
    with_source = make_retriever("events", index, embedder=embedder, vocabulary=pipeline.vocabulary)
    with_source.rank_events("was the pt on a blood thinner?")
    names = {with_source.table.concepts[m.concept].name for m in with_source.last_matches}
    assert names == {"Heparin", "Warfarin"}
    # without the source's table the lay term names neither drug
    plain = make_retriever("events", index, embedder=embedder, vocabulary=build_vocabulary())
    plain.rank_events("was the pt on a blood thinner?")
    assert not {"Heparin", "Warfarin"} & {plain.table.concepts[m.concept].name for m in plain.last_matches}


def test_a_source_without_vocabulary_terms_gives_the_base_vocabulary():
    class Bare:
        pass

    assert source_terms(Bare()) == []
    assert vocabulary_for_source(Bare(), []).source_terms == build_vocabulary().source_terms


def test_meds_codes_descriptions_are_vocabulary(tmp_path):
    terms = {t.label: t for t in open_source(hand_made(tmp_path / "meds")).vocabulary_terms()}
    assert terms["Creatinine"].category == "LAB"
    assert terms["Hemoglobin A1c"].category == "LOINC"


def test_omop_concept_synonyms_are_vocabulary(tmp_path):
    folder = _cdm54(tmp_path / "omop")
    assert open_source(folder).vocabulary_terms() == []  # no concept_synonym table
    (folder / "concept_synonym.csv").write_text(
        "concept_id,concept_synonym_name,language_concept_id\n3004410,HbA1c,4180186\n3004410,glycated hemoglobin,"
        "4180186\n3004410,Hemoglobin A1c,4180186\n")
    terms = open_source(folder).vocabulary_terms()
    assert [(t.label, t.abbreviations) for t in terms] == [("Hemoglobin A1c", ("HbA1c", "glycated hemoglobin"))]
    vocabulary = build_vocabulary()
    for term in terms:
        vocabulary.add_source_term(term)
    assert "Hemoglobin A1c" in vocabulary.meanings_in("last glycated hemoglobin?")


def test_fhir_code_systems_are_vocabulary(tmp_path):
    code_system = {"resourceType": "CodeSystem", "title": "MIMIC chart items", "concept": [
        {"code": "220045", "display": "Heart Rate", "designation": [{"value": "HR"}]},
        {"code": "g", "display": "Vitals", "concept": [{"code": "220179", "display": "Non Invasive Blood Pressure "
                                                                                      "systolic"}]}]}
    terms = fhir_terminology_terms([code_system, {"resourceType": "Patient", "id": "x"}])
    assert [(t.label, t.abbreviations, t.category) for t in terms] == [
        ("Heart Rate", ("HR",), "MIMIC chart items"), ("Vitals", (), "MIMIC chart items"),
        ("Non Invasive Blood Pressure systolic", (), "MIMIC chart items")]
    folder = tmp_path / "fhir"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1"}) + "\n")
    (folder / "CodeSystem.ndjson").write_text(json.dumps(code_system) + "\n")
    assert [t.label for t in open_source(folder).vocabulary_terms()][0] == "Heart Rate"


def test_packaged_drug_names_read_brand_names():
    if not packaged_drug_names():
        pytest.skip("drug-named-entity-recognition is not installed (optional extra)")
    vocabulary = build_vocabulary()
    assert "warfarin" in vocabulary.meanings_in("was coumadin held?", visits=False)
    assert "acetaminophen" in vocabulary.meanings_in("any tylenol", visits=False)
