"""`events` ranking: detail words (a drug's route) order the candidates and are not read as concept names."""

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

