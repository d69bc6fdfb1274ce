"""Flowsheet lines and tables in event packing: more events per budget, the same guarantees (budget, anchor,
citation by id) as one XML event per value."""

import re
import xml.etree.ElementTree as ET
from datetime import datetime as D, timedelta

import faiss
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from medalign_rag.chunking import ChunkingSettings, chunk_record
from medalign_rag.context import assemble_event_context
from medalign_rag.index.store import IndexManifest, PatientIndex
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.tokenization import default_counter
from tests.factories import make_record


def index_of(record: PatientRecord) -> PatientIndex:
    settings_ = ChunkingSettings(max_tokens=300)
    chunks = chunk_record(record, default_counter(), settings_)
    manifest = IndexManifest(patient_id=record.patient_id, embedding_model="none", dimension=4, chunking=settings_,
                             window_tokens=256, overlap_tokens=32, token_counter="cl100k_base", source_sha256="x",
                             n_chunks=len(chunks), n_windows=0)
    return PatientIndex(manifest=manifest, chunks=chunks, window_chunk=np.zeros(0, np.int32),
                        vectors=faiss.IndexFlatIP(4))


def vitals_record() -> PatientRecord:
    """One ICU stay: a heart rate every 15 minutes for three days, a few drugs, one note."""
    start = D(2146, 8, 10, 6)
    events = [Event(event_id="adm", timestamp=start, kind=EventKind.visit, name="ICU admission")]
    for n in range(288):
        events.append(Event(event_id=f"hr-{n}", timestamp=start + timedelta(minutes=15 * n),
                            kind=EventKind.measurement, name="Heart Rate", value=str(70 + n % 23), unit="bpm"))
    for n, drug in enumerate(["Heparin", "Furosemide", "Metoprolol", "Insulin", "Ondansetron", "Docusate"]):
        events.append(Event(event_id=f"rx-{n}", timestamp=start + timedelta(hours=5 * n + 1), kind=EventKind.drug,
                            name=drug, value=str(n + 1), unit="mg", text=f"PO; BID; until {start.date()} 23:00:00"))
    events.append(Event(event_id="note", timestamp=start + timedelta(hours=30), kind=EventKind.note,
                        name="Progress note", text="Stable overnight. " * 20))
    events.sort(key=lambda ev: ev.timestamp)
    return PatientRecord(patient_id="fs-1", encounters=[Encounter(
        encounter_id="icu", type="ICU", start=start, end=start + timedelta(days=3), events=events)])


def shown_values(text: str) -> int:
    """How many events the text shows: XML events, flowsheet items and table rows (with their repeat counts)."""
    root = ET.fromstring(text)  # well-formed XML, flowsheets and tables included
    events = len(root.findall(".//event"))
    items = [item for sheet in root.findall(".//flowsheet") for item in sheet.text.split("; ")]
    rows = [row for table in root.findall(".//table") for row in table.text.split("\n") if row.strip()]
    items += [cell for row in rows for cell in row.split(" | ")]  # a row holds every event of its time
    repeats = [re.search(r" \(x(\d+)\)$", item) for item in items]  # one item stands for n identical facts
    return events + sum(int(r.group(1)) if r else 1 for r in repeats)

def assert_packing_guarantees(context, index, counter, room: int, anchor) -> dict:
    """The guarantees every event packing keeps; returns the index's events by id for further checks."""
    # never over budget, counted exactly on the rendered text
    assert context.context_tokens == counter.count(context.text)
    assert context.context_tokens <= room
    events = {ev.event_id: ev for c in index.chunks for ev in c.events}
    # nothing after the anchor
    assert all(anchor is None or events[e].timestamp <= anchor for e in context.event_ids)
    # every shown event is cited by id, once, and every cited event is shown (no copies in these records)
    assert len(set(context.event_ids)) == len(context.event_ids)
    assert shown_values(context.text) == len(context.event_ids)
    return events



def test_a_flowsheet_fits_many_more_values_of_one_concept():
    index = index_of(vitals_record())
    counter = default_counter()
    ranking = [(p, i) for p, c in enumerate(index.chunks) for i, ev in enumerate(c.events)
               if ev.event_id.startswith("hr-")][::-1]  # "heart rate over the stay", newest first
    plain = assemble_event_context(index, strategy="events", budget=1500, counter=counter, event_ranking=ranking,
                                   flowsheet_min_values=0, table_min_rows=0)
    sheet = assemble_event_context(index, strategy="events", budget=1500, counter=counter, event_ranking=ranking)
    assert "<flowsheet" not in plain.text
    assert sheet.text.count('<flowsheet type="measurement" name="Heart Rate" unit="bpm">') == 1
    assert len(sheet.event_ids) > 2 * len(plain.event_ids)
    assert sheet.context_tokens <= sheet.available_tokens
    # each value is shown once, with its time of day; the date is written where it changes
    assert shown_values(sheet.text) == len(sheet.event_ids)
    line = ET.fromstring(sheet.text).find(".//flowsheet").text
    assert line.startswith("2146-08-")
    assert len(re.findall(r"\b2146-08-1\d ", line)) <= 3


def test_many_events_of_one_type_become_table_rows_with_shorter_times():
    index = index_of(vitals_record())
    ranking = [(p, i) for p, c in enumerate(index.chunks) for i, ev in enumerate(c.events)
               if ev.event_id.startswith("rx-")]
    context = assemble_event_context(index, strategy="events", budget=1000, counter=default_counter(),
                                     event_ranking=ranking, table_min_rows=3)
    table = ET.fromstring(context.text).find(".//table")
    assert table is not None and table.get("type") == "drug_exposure"
    rows = [r.strip() for r in table.text.split("\n") if r.strip()]
    assert len(rows) == 6 == len(context.event_ids)
    assert rows[0] == "2146-08-10 07:00 Heparin 1 mg PO; BID; until 23:00"  # same-day "until" loses its date


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3000), budget=st.integers(500, 9000), overhead=st.integers(0, 200),
       order_seed=st.integers(0, 1000), anchor_day=st.one_of(st.none(), st.integers(0, 1500)),
       min_values=st.integers(0, 6), min_rows=st.integers(0, 6))
def test_flowsheet_packing_guarantees(seed, budget, overhead, order_seed, anchor_day, min_values, min_rows):
    index = index_of(make_record(seed, n_encounters=8, max_events=60, note_words=80))
    counter = default_counter()
    anchor = None if anchor_day is None else D(2015, 1, 1) + timedelta(days=anchor_day)
    ranking = [(p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events))]
    np.random.default_rng(order_seed).shuffle(ranking)
    context = assemble_event_context(index, strategy="events", budget=budget, counter=counter,
                                     event_ranking=ranking, overhead_tokens=overhead, reserve_tokens=256,
                                     time_anchor=anchor, flowsheet_min_values=min_values, table_min_rows=min_rows)
    events = assert_packing_guarantees(context, index, counter, budget - overhead - 256, anchor)
    assert {c.encounter_id for c in context.citations} == {
        c.encounter_id for c in index.chunks for ev in c.events if ev.event_id in set(context.event_ids)}
    # with compact rendering off, the text is the release layout: one <event> per cited event
    if not min_values and not min_rows:
        assert "<flowsheet" not in context.text and "<table" not in context.text
