"""`events` ranking: detail words (a drug's route) order the candidates and are not read as concept names; breadth first
across concepts for questions without a direction; a question naming a class matches all of its members."""

from datetime import datetime as D, timedelta

import pytest

from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import load_index
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.retrieval.events import EventsRetriever
from medalign_rag.retrieval.vocabulary import build_vocabulary

ROUTES = ["PO", "IV", "PO", "SC", "PO", "IV", "PR", "PO", "IV", "PO", "SC", "PO"]
DRUGS = ["Docusate", "Vancomycin", "Senna", "Heparin", "Metoprolol", "Cefazolin", "Bisacodyl", "Aspirin",
         "Furosemide", "Atorvastatin", "Insulin", "Omeprazole"]


def drug_record() -> PatientRecord:
    """Two stays; drugs with their route in the text, a platelet count (what "pr" would wrongly expand to)."""
    encounters = []
    for stay, start in enumerate((D(2150, 3, 1, 8), D(2150, 9, 10, 8))):
        events = [Event(event_id=f"adm{stay}", timestamp=start, kind=EventKind.visit, name="Hospital admission")]
        for n, (drug, route) in enumerate(zip(DRUGS, ROUTES)):
            stamp = start + timedelta(hours=4 * n + 1)
            events.append(Event(event_id=f"rx{stay}-{n}", timestamp=stamp, kind=EventKind.drug, name=drug,
                                value="1", unit="dose", text=f"{route}; DAILY; until {stamp:%Y-%m-%d} 23:00:00"))
            events.append(Event(event_id=f"plt{stay}-{n}", timestamp=stamp, kind=EventKind.measurement,
                                name="Platelet Count", value=str(200 + n), unit="K/uL"))
        encounters.append(Encounter(encounter_id=f"stay{stay}", type="inpatient", start=start,
                                    end=start + timedelta(days=3), events=events))
    return PatientRecord(patient_id="rx-1", encounters=encounters)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("events_ranking")
    write_release_xml(drug_record(), folder / "ehrs" / "rx-1.xml")
    builder = IndexBuilder(IndexSettings(index_dir=folder / "indexes"))
    builder.build(open_data_folder(folder))
    return load_index(builder.settings.index_dir, "rx-1"), builder.embedder


def first_ids(index, order, n):
    return [index.chunks[p].events[i].event_id for p, i in order[:n]]


def test_a_route_word_orders_the_drugs_given_that_way_first(built):
    index, embedder = built
    retriever = EventsRetriever(index, embedder, vocabulary=build_vocabulary())
    order = retriever.rank_events("What was the last drug given via the pr route?")
    assert first_ids(index, order, 2) == ["rx1-6", "rx0-6"]  # the PR drug, newest first
    # "pr" was a detail, not a concept: the drugs (every one), not the platelet counts, are the candidates
    names = {retriever.table.concepts[m.concept].name for m in retriever.last_matches}
    assert "Platelet Count" not in names and "Bisacodyl" in names
    # a word every candidate holds tells them apart no better than none
    order = retriever.rank_events("What was the last drug given daily?")
    assert first_ids(index, order, 1) == ["rx1-11"]



CULTURES = ["Blood", "Urine", "Sputum", "Wound", "Stool", "Pleural Fluid", "Joint Fluid", "Bile", "Catheter Tip",
            "Throat", "Nasal Swab", "Tissue", "Abscess", "Bronchial Washings", "Peritoneal Fluid", "Eye"]


def breadth_record() -> PatientRecord:
    """One stay: a saline infusion charted every 30 minutes for two days, fifteen drugs ordered once each, and
    sixteen kinds of culture (more than the few best concept matches a question keeps)."""
    start = D(2150, 3, 1, 8)
    events = [Event(event_id="adm", timestamp=start, kind=EventKind.visit, name="Hospital admission")]
    for n in range(96):
        events.append(Event(event_id=f"ns-{n}", timestamp=start + timedelta(minutes=30 * n + 5),
                            kind=EventKind.drug, name="NaCl 0.9%", value="50", unit="ml"))
    for n, drug in enumerate(DRUGS + ["Lorazepam", "Ondansetron", "Pantoprazole"]):
        events.append(Event(event_id=f"rx-{n}", timestamp=start + timedelta(hours=2 * n + 1), kind=EventKind.drug,
                            name=drug, value="1", unit="dose", text="PO; DAILY"))
    for n, specimen in enumerate(CULTURES):
        events.append(Event(event_id=f"cx-{n}", timestamp=start + timedelta(hours=n + 2), kind=EventKind.measurement,
                            name=f"{specimen} Culture", value="NO GROWTH"))
    grown = start + timedelta(hours=30)  # an organism reported with its susceptibilities
    events.append(Event(event_id="org", timestamp=grown, kind=EventKind.measurement,
                        name="Organism in Urine Culture", value="ESCHERICHIA COLI"))
    for n, antibiotic in enumerate(["AMPICILLIN", "CEFAZOLIN", "GENTAMICIN", "NITROFURANTOIN"]):
        events.append(Event(event_id=f"susc-{n}", timestamp=grown, kind=EventKind.measurement,
                            name=f"ESCHERICHIA COLI susceptibility to {antibiotic}", value="S"))
    events.append(Event(event_id="note", timestamp=grown, kind=EventKind.note, name="Progress note",
                        text="Urine culture growing E. coli. " * 10))
    events.sort(key=lambda ev: ev.timestamp)
    return PatientRecord(patient_id="br-1", encounters=[Encounter(
        encounter_id="stay", type="inpatient", start=start, end=start + timedelta(days=2), events=events)])


@pytest.fixture(scope="module")
def breadth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("events_breadth")
    write_release_xml(breadth_record(), folder / "ehrs" / "br-1.xml")
    builder = IndexBuilder(IndexSettings(index_dir=folder / "indexes"))
    builder.build(open_data_folder(folder))
    return load_index(builder.settings.index_dir, "br-1"), builder.embedder


def test_a_question_without_direction_shows_every_drug_before_a_second_value_of_one(breadth):
    index, embedder = breadth
    retriever = EventsRetriever(index, embedder, vocabulary=build_vocabulary())
    order = retriever.rank_events("How many distinct drugs were prescribed?")
    first = first_ids(index, order, 16)
    # one value of each of the sixteen drugs first (the infusion's newest), not the infusion's last sixteen
    assert sum(e.startswith("rx-") for e in first) == 15 and sum(e.startswith("ns-") for e in first) == 1
    assert "ns-95" in first
    # "the last drug" keeps one time order across drugs: the infusion's last values lead
    order = retriever.rank_events("What was the last drug given?")
    assert first_ids(index, order, 3) == ["ns-95", "ns-94", "ns-93"]
    plain = EventsRetriever(index, embedder, vocabulary=build_vocabulary(), breadth_first=False)
    order = plain.rank_events("How many distinct drugs were prescribed?")
    assert sum(e.startswith("rx-") for e in first_ids(index, order, 16)) < 15


def test_a_question_naming_a_class_matches_every_member(breadth):
    index, embedder = breadth
    question = "Did the patient have any culture results?"
    retriever = EventsRetriever(index, embedder, vocabulary=build_vocabulary())
    retriever.rank_events(question)
    names = {retriever.table.concepts[m.concept].name for m in retriever.last_matches}
    assert {f"{s} Culture" for s in CULTURES} <= names and len(CULTURES) > retriever.max_concepts
    # the best few alone leave members out
    few = EventsRetriever(index, embedder, vocabulary=build_vocabulary(), class_matches=False)
    few.rank_events(question)
    assert len({few.table.concepts[m.concept].name for m in few.last_matches}) <= few.max_concepts


def test_results_reported_together_follow_the_asked_one(breadth):
    index, embedder = breadth
    question = "What organism was found in the urine culture?"
    order = EventsRetriever(index, embedder, vocabulary=build_vocabulary()).rank_events(question)
    ids = [index.chunks[p].events[i].event_id for p, i in order]
    companions = {f"susc-{n}" for n in range(4)}
    # the susceptibilities reported with the organism come right after the matched candidates, before the
    # events text retrieval brings (the note of the same moment is not one of them)
    assert companions <= set(ids[: ids.index("org") + 10])
    assert max(ids.index(e) for e in companions) < ids.index("note")
    alone = EventsRetriever(index, embedder, vocabulary=build_vocabulary(), companions=0).rank_events(question)
    alone_ids = [index.chunks[p].events[i].event_id for p, i in alone]
    assert max(alone_ids.index(e) for e in companions) > max(ids.index(e) for e in companions)
