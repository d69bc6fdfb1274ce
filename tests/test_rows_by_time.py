"""Table rows by time and the choice between a flowsheet line and rows: every cited event is shown with its own
date, time and value, whichever way it is written, and the budget, anchor and citation guarantees hold."""

import re
import xml.etree.ElementTree as ET
from datetime import datetime as D, timedelta
from xml.sax.saxutils import escape

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from medalign_rag import context as context_module
from medalign_rag.context import assemble_event_context
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.tokenization import default_counter
from tests.factories import make_record
from tests.test_flowsheet import assert_packing_guarantees, index_of, shown_values

PANEL = [("Sodium", "mEq/L"), ("Potassium", "mEq/L"), ("Chloride", "mEq/L"), ("Bicarbonate", "mEq/L"),
         ("Urea Nitrogen", "mg/dL"), ("Creatinine", "mg/dL"), ("Glucose", "mg/dL"), ("Calcium, Total", "mg/dL"),
         ("Magnesium", "mg/dL"), ("Phosphate", "mg/dL"), ("Hematocrit", "%"), ("Platelet Count", "K/uL")]


def panels_record(days: int = 8) -> PatientRecord:
    """One stay: a twelve-lab panel drawn together every morning, a heart rate every 30 minutes."""
    start = D(2150, 12, 28, 6)  # the stay crosses a new year: dates drop the year only while it stays the same
    events = []
    for day in range(days):
        drawn = start + timedelta(days=day, minutes=30)
        for n, (name, unit) in enumerate(PANEL):
            events.append(Event(event_id=f"lab-{day}-{n}", timestamp=drawn, kind=EventKind.measurement, name=name,
                                value=f"{(day * 7 + n * 3) % 50 + 1}", unit=unit))
    for n in range(days * 48):
        events.append(Event(event_id=f"hr-{n}", timestamp=start + timedelta(minutes=30 * n + 7),
                            kind=EventKind.measurement, name="Heart Rate", value=str(60 + n % 31), unit="bpm"))
    events.sort(key=lambda ev: ev.timestamp)
    return PatientRecord(patient_id="panel-1", encounters=[Encounter(
        encounter_id="stay", type="inpatient", start=start, end=start + timedelta(days=days), events=events)])


_STAMP = re.compile(r"^(?:(\d{4}-)?(\d{2}-\d{2}) )?(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(?: (.*))?$")
_REPEAT = re.compile(r" \(x\d+\)$")


def shown_facts(text: str) -> set[tuple]:
    """(name or "", date, time of day, what is shown of the event) for every table cell, flowsheet item and XML
    event of a rendered context: the date carried from the last one written (a year carried likewise)."""
    facts: set[tuple] = set()
    root = ET.fromstring(text)

    def walk(items: list[str], name: str, cells: bool) -> None:
        year, day = None, None
        for item in items:
            match = _STAMP.match(item.strip())
            assert match, item
            if match.group(2):
                year = match.group(1)[:4] if match.group(1) else year
                day = f"{year}-{match.group(2)}"
            assert day is not None, f"an item before any date: {item}"
            body = match.group(4) or ""
            for part in (body.split(" | ") if cells else [body]):
                facts.add((name, day, match.group(3), _REPEAT.sub("", part)))

    for sheet in root.iter("flowsheet"):
        walk(sheet.text.split("; "), sheet.get("name") or "", cells=False)
    for table in root.iter("table"):
        walk([row for row in table.text.split("\n") if row.strip()], "", cells=True)
    for entry in root.iter("entry"):
        day, time = entry.get("timestamp").split(" ")
        for event in entry.iter("event"):
            facts.add((event.get("name") or "", day, time, event.text or ""))
    return facts


def expected_fact(event: Event, text: str) -> tuple | None:
    """How `event` reads in the context, or None when it is not there: its table cell, flowsheet item or XML
    event, each with its own date and time of day."""
    day = event.timestamp.strftime("%Y-%m-%d")
    short = context_module._flowsheet_time(event.timestamp)
    cell = context_module._table_cell(event)
    item = context_module._flowsheet_item(event, with_date=False).split(" ", 1)
    facts = shown_facts(text)
    for fact in (("", day, short, cell), (event.name or "", day, short, item[1] if len(item) > 1 else ""),
                 (event.name or "", day, event.timestamp.strftime("%H:%M:%S"), escape(event.value or ""))):
        if fact in facts:
            return fact
    return None


def test_a_panel_drawn_together_is_one_row_and_hourly_vitals_keep_their_line():
    index = index_of(panels_record())
    counter = default_counter()
    ranking = [(p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events))][::-1]
    context = assemble_event_context(index, strategy="events", budget=6000, counter=counter, event_ranking=ranking)
    root = ET.fromstring(context.text)
    # the labs, one value a day each, are rows of their draw time (cheaper than twelve lines); the heart rate,
    # 48 values a day, is one flowsheet line
    assert [sheet.get("name") for sheet in root.iter("flowsheet")] == ["Heart Rate"]
    rows = [row.strip() for table in root.iter("table") for row in table.text.split("\n") if row.strip()]
    full_rows = [row for row in rows if row.count(" | ") == len(PANEL) - 1]
    assert len(full_rows) >= 2  # whole panels, one row each
    assert rows[-1].startswith("01-") and any(row.startswith("2150-12-") for row in rows)
    assert shown_values(context.text) == len(context.event_ids) == len(set(context.event_ids))
    events = {ev.event_id: ev for c in index.chunks for ev in c.events}
    assert all(expected_fact(events[e], context.text) for e in context.event_ids)
    assert context.context_tokens <= context.available_tokens
    # a budget too small for every panel holds more of them as rows by time than as one row per event
    labs = [(p, i) for p, i in ranking if index.chunks[p].events[i].event_id.startswith("lab-")]
    by_time = assemble_event_context(index, strategy="events", budget=1200, counter=counter, event_ranking=labs)
    original = context_module.TABLE_ROWS_BY_TIME
    try:
        context_module.TABLE_ROWS_BY_TIME = False
        context_module._FLOWSHEET_COSTS.pop(index.state, None)  # table headers are priced with the layout
        per_event = assemble_event_context(index, strategy="events", budget=1200, counter=counter,
                                           event_ranking=labs)
    finally:
        context_module.TABLE_ROWS_BY_TIME = original
        context_module._FLOWSHEET_COSTS.pop(index.state, None)
    assert len(per_event.event_ids) < len(by_time.event_ids) < len(labs)
    assert len(by_time.event_ids) >= 1.3 * len(per_event.event_ids)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 3000), budget=st.integers(500, 6000), overhead=st.integers(0, 200),
       order_seed=st.integers(0, 1000), anchor_day=st.one_of(st.none(), st.integers(0, 1500)),
       min_values=st.integers(0, 6), min_rows=st.integers(0, 6), panels=st.booleans())
def test_every_cited_event_is_shown_with_its_time_and_value(seed, budget, overhead, order_seed, anchor_day,
                                                            min_values, min_rows, panels):
    record = panels_record(days=3) if panels else make_record(seed, n_encounters=8, max_events=60, note_words=30)
    index = index_of(record)
    counter = default_counter()
    start = record.encounters[0].start
    anchor = None if anchor_day is None else start + timedelta(hours=anchor_day * (2 if panels else 24))
    ranking = [(p, i) for p, c in enumerate(index.chunks) for i in range(len(c.events))]
    np.random.default_rng(order_seed).shuffle(ranking)
    context = assemble_event_context(index, strategy="events", budget=budget, counter=counter,
                                     event_ranking=ranking, overhead_tokens=overhead, reserve_tokens=256,
                                     time_anchor=anchor, flowsheet_min_values=min_values, table_min_rows=min_rows)
    events = assert_packing_guarantees(context, index, counter, budget - overhead - 256, anchor)
    # each cited event reads with its own date, time and value (its cell, flowsheet item or XML event)
    missing = [e for e in context.event_ids if events[e].kind is not EventKind.note
               and expected_fact(events[e], context.text) is None]
    assert not missing, missing[:3]
