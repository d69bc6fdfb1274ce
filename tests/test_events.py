"""The `events` strategy: concept table, event ranking, event-level packing and its guarantees."""

from datetime import datetime as D, timedelta

import faiss
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.context import assemble_context, near_duplicate, _shingles
from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import IndexManifest, PatientIndex, load_index
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.retrieval import make_retriever, strategy_names
from medalign_rag.retrieval.concepts import build_concept_table, concept_table
from medalign_rag.retrieval.events import EventsRetriever
from medalign_rag.retrieval.vocabulary import build_vocabulary
from medalign_rag.tokenization import default_counter
from tests.factories import make_record
from tests.test_flowsheet import shown_values


def measurement(eid, stamp, name, value, unit):
    return Event(event_id=eid, timestamp=stamp, kind=EventKind.measurement, name=name, value=value, unit=unit)


NOTE = ("Patient admitted with community acquired pneumonia. Started on ceftriaxone and azithromycin. Oxygen "
        "requirement improving, now on two liters by nasal cannula. Tolerating diet. Ambulating with assistance. "
        "Plan: continue antibiotics, wean oxygen, physical therapy evaluation, discharge planning in two days. ")


def icu_record() -> PatientRecord:
    """Two hospital stays, each with many vitals and labs, notes copied forward day to day."""
    encounters = []
    for stay, start in enumerate((D(2150, 3, 1, 8), D(2151, 6, 10, 8))):
        events = [Event(event_id=f"adm{stay}", timestamp=start, kind=EventKind.visit, name="Hospital admission")]
        for hour in range(0, 72, 2):
            stamp = start + timedelta(hours=hour)
            events.append(measurement(f"hr{stay}-{hour}", stamp, "Heart Rate", str(80 + hour % 17), "bpm"))
            events.append(measurement(f"sat{stay}-{hour}", stamp, "O2 saturation pulseoxymetry",
                                      str(90 + hour % 9), "%"))
            if hour % 12 == 0:
                events.append(measurement(f"k{stay}-{hour}", stamp, "Potassium", f"{3.5 + hour / 100:.2f}", "mEq/L"))
                events.append(measurement(f"hgb{stay}-{hour}", stamp, "Hemoglobin", f"{12 - hour / 50:.1f}", "g/dL"))
            if hour % 24 == 6:
                events.append(Event(event_id=f"note{stay}-{hour}", timestamp=stamp, kind=EventKind.note,
                                    name="Progress note", text=NOTE + f"Day {hour // 24 + 1}."))
        events.append(Event(event_id=f"rx{stay}", timestamp=start + timedelta(hours=3), kind=EventKind.drug,
                            name="Heparin", value="5000", unit="UNIT"))
        events.append(Event(event_id=f"dx{stay}", timestamp=start + timedelta(hours=70), kind=EventKind.condition,
                            name="Pneumonia, unspecified organism", code="ICD10CM/J189"))
        encounters.append(Encounter(encounter_id=f"stay{stay}", type="inpatient", start=start,
                                    end=start + timedelta(hours=72), events=events))
    return PatientRecord(patient_id="icu-1", encounters=encounters)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("events")
    write_release_xml(icu_record(), folder / "ehrs" / "icu-1.xml")
    builder = IndexBuilder(IndexSettings(index_dir=folder / "indexes"))
    builder.build(open_data_folder(folder))
    return load_index(builder.settings.index_dir, "icu-1"), builder.embedder


def test_events_is_a_registered_strategy():
    assert "events" in strategy_names()
    assert strategy_names().index("events") < strategy_names().index("oracle")


def test_concept_table_summarizes_each_concept(built):
    index, _ = built
    table = concept_table(index, None)
    assert concept_table(index, None) is table  # kept in the index state
    assert index.state.concepts[None] is table
    by_name = {c.name: c for c in table.concepts}
    potassium = by_name["Potassium"]
    assert potassium.kind == EventKind.measurement and potassium.unit == "mEq/L"
    assert potassium.count == 12
    assert potassium.first == D(2150, 3, 1, 8) and potassium.last == D(2151, 6, 12, 20)
    assert potassium.last_value == "4.10"
    assert by_name["Pneumonia, unspecified organism"].code == "ICD10CM/J189"
    # every event belongs to exactly one concept
    assert sum(c.count for c in table.concepts) == sum(len(c.events) for c in index.chunks)


def test_abbreviations_reach_this_patients_concepts(built):
    index, embedder = built
    vocabulary = build_vocabulary()
    table = build_concept_table(index, vocabulary)
    for typed, wanted in (("Hgb", "Hemoglobin"), ("K+", "Potassium"), ("HR", "Heart Rate"),
                          ("sat", "O2 saturation pulseoxymetry")):
        matches = table.match(typed.lower(), expansions=vocabulary.meanings_in(typed), embedder=embedder)
        assert matches and table.concepts[matches[0].concept].name == wanted, typed
    assert table.match("", embedder=embedder) == []


def test_latest_value_of_a_concept_comes_first(built):
    index, embedder = built
    retriever = EventsRetriever(index, embedder, vocabulary=build_vocabulary())
    order = retriever.rank_events("most recent K+?")
    first = index.chunks[order[0][0]].events[order[0][1]]
    assert first.event_id == "k1-60"
    # the first Hgb of the first admission
    order = retriever.rank_events("1st Hgb on 1st adm")
    first = index.chunks[order[0][0]].events[order[0][1]]
    assert first.event_id == "hgb0-0"


def test_events_pack_the_asked_concept_tighter_than_chunks(built):
    index, embedder = built
    counter = default_counter()
    question = "all HR values during the first hospital stay"
    gold = {ev.event_id for c in index.chunks for ev in c.events if ev.event_id.startswith("hr0-")}
    events = make_retriever("events", index, embedder=embedder)
    temporal = make_retriever("temporal", index, embedder=embedder)
    packed_events = assemble_context(index, strategy="events", budget=2048, counter=counter,
                                     ranking=events.rank_events(question))
    packed_chunks = assemble_context(index, strategy="temporal", budget=2048, counter=counter,
                                     ranking=[p for p, _ in temporal.rank(question)])
    covered = lambda ctx: len(gold & set(ctx.event_ids)) / len(gold)  # noqa: E731
    assert covered(packed_events) == 1.0
    assert covered(packed_events) > covered(packed_chunks)


def test_llama_index_retrieve_gives_chunks(built):
    index, embedder = built
    nodes = make_retriever("events", index, embedder=embedder, top_k=3).retrieve("latest potassium")
    assert len(nodes) == 3
    assert any(ev.startswith("k1-") for ev in nodes[0].node.metadata["event_ids"])


# -- the packing guarantees, on random records and random event orders ------------------------------------------

def lexical_index(seed: int) -> PatientIndex:
    record = make_record(seed, n_encounters=8, max_events=40, note_words=120)
    chunks = chunk_record(record, default_counter(), ChunkingSettings(max_tokens=300))
    manifest = IndexManifest(patient_id=record.patient_id, embedding_model="none", dimension=4,
                             chunking=ChunkingSettings(max_tokens=300), window_tokens=256, overlap_tokens=32,
                             token_counter="cl100k_base", source_sha256="x", n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3000), budget=st.integers(500, 9000), overhead=st.integers(0, 200),
       order_seed=st.integers(0, 1000), anchor_day=st.one_of(st.none(), st.integers(0, 1500)))
def test_event_packing_guarantees(seed, budget, overhead, order_seed, anchor_day):
    index = lexical_index(seed)
    counter = default_counter()
    anchor = None if anchor_day is None else D(2015, 1, 1) + timedelta(days=anchor_day)
    pairs = [(p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events))]
    np.random.default_rng(order_seed).shuffle(pairs)
    assembled = assemble_context(index, strategy="events", budget=budget, counter=counter, ranking=pairs,
                                 overhead_tokens=overhead, reserve_tokens=256, time_anchor=anchor)
    # never over budget, counted exactly
    assert assembled.context_tokens == counter.count(assembled.text)
    assert assembled.context_tokens <= budget - overhead - 256
    events = {ev.event_id: ev for c in index.chunks for ev in c.events}
    # nothing after the anchor
    assert all(anchor is None or events[e].timestamp <= anchor for e in assembled.event_ids)
    # every packed event is cited by id, once; the text holds exactly the cited events (no copies here), as XML
    # events, flowsheet items or table rows
    assert len(set(assembled.event_ids)) == len(assembled.event_ids)
    assert shown_values(assembled.text) == len(assembled.event_ids)
    # rendered chronologically (record order), under their encounters' headers
    ordinal = {ev.event_id: (c.ordinal + i) for c in index.chunks for i, ev in enumerate(c.events)}
    shown = [ordinal[e] for e in assembled.event_ids]
    assert shown == sorted(shown)
    assert {c.encounter_id for c in assembled.citations} == {
        c.encounter_id for c in index.chunks for ev in c.events if ev.event_id in set(assembled.event_ids)}


def test_copied_forward_notes_are_packed_once_and_the_later_copy_cites_both(built):
    index, _ = built
    notes = [(p, i) for p, c in enumerate(index.chunks) for i, ev in enumerate(c.events) if ev.kind == EventKind.note]
    assert len(notes) == 6
    texts = [index.chunks[p].events[i].text for p, i in notes]
    assert near_duplicate(_shingles(texts[0]), _shingles(texts[1]))
    assembled = assemble_context(index, strategy="events", budget=4096, counter=default_counter(), ranking=notes)
    assert assembled.text.count("Progress note") == 1
    # the copy that is shown is the latest one, and it cites every copy it stands for
    latest = max((index.chunks[p].events[i] for p, i in notes), key=lambda ev: ev.timestamp)
    assert assembled.event_ids[0] == latest.event_id
    assert set(assembled.event_ids) == {index.chunks[p].events[i].event_id for p, i in notes}
    assert latest.timestamp.strftime("%Y-%m-%d %H:%M") in assembled.text
