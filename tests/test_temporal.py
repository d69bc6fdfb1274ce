from datetime import datetime, timedelta

import numpy as np
import pytest

from medalign_rag.index.builder import IndexBuilder, IndexSettings
from medalign_rag.index.store import load_index
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.retrieval import make_retriever, strategy_names
from medalign_rag.retrieval.temporal import time_arrays
from medalign_rag.retrieval.time_cues import LATEST, parse_temporal_cues


def TemporalRetriever(index, embedder, time_anchor=None):
    return make_retriever("temporal", index, embedder=embedder, time_anchor=time_anchor)

ANCHOR = datetime(2146, 12, 31, 23, 59)
D = datetime


def window_of(question: str, anchor: datetime | None = ANCHOR) -> list[tuple[datetime, datetime]]:
    return [(w.start, w.end) for w in parse_temporal_cues(question, anchor).windows]


# -- the parser, on phrasings taken from the synthetic cohort and FHIR-AgentBench ------------------------------

@pytest.mark.parametrize("question, expected", [
    ("What was the patient's LDL cholesterol on 2012-08-04?", [(D(2012, 8, 4), D(2012, 8, 5))]),
    ("Summarize the office visit of 2014-09-14.", [(D(2014, 9, 14), D(2014, 9, 15))]),
    ("How many emergency department visits did the patient have between 2020-01-23 and 2021-12-14?",
     [(D(2020, 1, 23), D(2021, 12, 15))]),
    ("Show me patient 10014354's total void output amount since 08/11/2146.", [(D(2146, 8, 11), LATEST)]),
    ("What was the average value of heart rate for patient 10029291 on 03/02/2123?", [(D(2123, 3, 2), D(2123, 3, 3))]),
    ("Did patient 10007818 go through any lab test in 07/2146?", [(D(2146, 7, 1), D(2146, 8, 1))]),
    ("Has patient 10023239 had any medication prescribed since 05/2137?", [(D(2137, 5, 1), LATEST)]),
    ("How frequently was milk of magnesia prescribed to patient 10005348 in 09/this year?",
     [(D(2146, 9, 1), D(2146, 10, 1))]),
    ("Tell me patient 10037975's minimum spo2 on 02/10/this year.", [(D(2146, 2, 10), D(2146, 2, 11))]),
    (("What is the monthly level of patient 10038999's lipase in 2131? if multiple lipase levels are measured "
     "monthly, take the minimum."), [(D(2131, 1, 1), D(2132, 1, 1))]),
    ("Has there been a performance of cardiac output, continuous procedure performed on patient 10021118 since 2161?",
     [(D(2161, 1, 1), LATEST)]),
    (("How much was the difference in weight of patient 10029291 measured at 2123-03-07 03:00:00 compared to the "
     "value measured at 2123-03-05 00:00:00?"), [(D(2123, 3, 5), D(2123, 3, 6)), (D(2123, 3, 7), D(2123, 3, 8))]),
    ("Was patient 10029484 tested in the 25-oh vitamin d lab in the last month?", [(D(2146, 11, 1), D(2146, 12, 1))]),
    ("Has there been any procedure that patient 10022880 had in this year?", [(D(2146, 1, 1), D(2147, 1, 1))]),
    ("Was patient 10020187 admitted into the emergency room in the previous year?", [(D(2145, 1, 1), D(2146, 1, 1))]),
    ("Has patient 10037975 been given a creatinine, urine test since 15 months ago?",
     [(D(2145, 9, 30, 23, 59), LATEST)]),
    ("Calculate the total number of distinct medications that patient 10007818 was prescribed since 1 year ago.",
     [(D(2145, 12, 31, 23, 59), LATEST)]),
    ("Can you tell me the total volume of pre-admission output for patient 10037975 since 351 days ago?",
     [(ANCHOR - timedelta(days=351), LATEST)]),
    ("List all labs drawn in the last 30 days.", [(ANCHOR - timedelta(days=30), LATEST)]),
    ("What was the blood pressure on March 4, 2019?", [(D(2019, 3, 4), D(2019, 3, 5))]),
    ("Any imaging before 2019-06-01?", [(datetime(1, 1, 1), D(2019, 6, 1))]),
    ("Was the potassium checked this month?", [(D(2146, 12, 1), D(2147, 1, 1))]),
])
def test_date_windows_from_real_phrasings(question, expected):
    assert sorted(window_of(question)) == sorted(expected)


@pytest.mark.parametrize("question, direction", [
    ("What was the most recent hemoglobin A1c?", "recent"),
    ("What was the patient's first recorded hemoglobin A1c, and when was it measured?", "first"),
    ("When was hyperlipidemia first diagnosed?", "first"),
    ("What was the latest creatinine?", "recent"),
    ("What is the current dose of metformin?", "recent"),
    ("What was the earliest recorded weight?", "first"),
    ("When was patient 10016150 last admitted to the hospital?", "recent"),
    ("Why was lisinopril stopped, and when?", None),
    ("Which medications has the patient been prescribed for high cholesterol, and when were they started?", None),
    # "last" of "last month" / "the last hospital visit" is not a direction
    ("Was patient 10029484 tested in the 25-oh vitamin d lab in the last month?", None),
    ("How much ferrous sulfate was patient 10012853 prescribed in total in their last hospital encounter?", None),
    # the direction inside a visit: "the last time ... in the first icu visit" asks for the latest in that visit
    ("When was the last time patient 10012552 was measured heart rate greater than 78.0 in the first icu visit?",
     "recent"),
    ("What was the first value of a myelocytes lab test of patient 10004235 during their last hospital visit?",
     "first"),
])
def test_direction_words(question, direction):
    assert parse_temporal_cues(question, ANCHOR).direction == direction


@pytest.mark.parametrize("question, ordinal, kind", [
    (("Did patient 10029291 undergo a ultrasonography of superior vena cava, guidance treatment in the first "
     "hospital visit?"), "first", "hospital"),
    ("What was the maximum value of heart rate for patient 10003046 in the last icu visit?", "last", "icu"),
    ("Tell me the marital status of patient 10004720 during the first hospital encounter.", "first", "hospital"),
    ("Calculate the length of stay in days for the first stay of patient 10007928 in the icu.", "first", "icu"),
    ("Compute the last stay in days of patient 10023239 in the icu.", "last", "icu"),
    ("Calculate patient 10007928's length of stay in days for the first icu stay.", "first", "icu"),
    ("Summarize the most recent emergency room visit.", "last", "emergency"),
    ("What happened at the first office visit?", "first", "office"),
])
def test_visit_ordinals(question, ordinal, kind):
    cues = parse_temporal_cues(question, None)
    assert [(v.ordinal, v.kind) for v in cues.visits] == [(ordinal, kind)]
    assert not cues.windows


def test_relative_periods_need_an_anchor_but_dates_do_not():
    assert window_of("Has patient 10005909 had any procedure throughout this year?", None) == []
    assert window_of("since 4 months ago", None) == []
    assert window_of("Did patient 10022017 have a pt test done in 10/2189?", None) == [(D(2189, 10, 1), D(2189, 11, 1))]


def test_no_cues_and_non_dates():
    for question in ("Could you tell me the gender of patient 10016742?",
                     ("Has patient 10016742 received any treatment of respiratory ventilation, greater than 96 "
                     "consecutive hours?"),
                     "Was 1000 ml of saline given?", "What is the value 13/45/2020?",
                     "Which medications has the patient been prescribed for high cholesterol?"):
        assert parse_temporal_cues(question, ANCHOR).empty, question


def test_content_query_drops_the_cues_and_the_asking():
    cues = parse_temporal_cues("What was the patient's first recorded creatinine, and when was it measured?", ANCHOR)
    assert cues.content_query == "creatinine"
    cues = parse_temporal_cues("In 10/2184, when was patient 10018845's last microbiology test?", ANCHOR)
    assert "microbiology" in cues.content_query and "2184" not in cues.content_query
    assert "10018845" not in cues.content_query


# -- the retriever on a small hand-built record ----------------------------------------------------------------

def lab(eid: str, stamp: datetime, name: str, value: str, unit: str = "%") -> Event:
    return Event(event_id=eid, timestamp=stamp, kind=EventKind.measurement, name=name, value=value, unit=unit)


def note(eid: str, stamp: datetime, text: str) -> Event:
    return Event(event_id=eid, timestamp=stamp, kind=EventKind.note, name="progress note", text=text)


FILLER = ("Patient seen for routine follow-up. Reports good adherence to diet and exercise. Sleeps well. "
          "No chest pain, no dyspnea. Plan to continue current regimen and return in six months. ") * 3


def office_visit(i: int, day: datetime, *, a1c: str | None = None, extra: list[Event] = ()) -> Encounter:
    events = [note(f"n{i}", day.replace(hour=9), FILLER)]
    if a1c is not None:
        events.append(lab(f"a1c{i}", day.replace(hour=10), "Hemoglobin A1c", a1c))
    events.extend(extra)
    return Encounter(encounter_id=f"office{i}", type="Office Visit", start=day.replace(hour=8),
                     end=day.replace(hour=11), events=events)


def hand_built_record() -> PatientRecord:
    encounters = [
        office_visit(1, D(2015, 3, 2), a1c="6.1"),
        office_visit(2, D(2016, 5, 9)),
        Encounter(encounter_id="adm1", type="Inpatient Visit", start=D(2017, 1, 10, 14), end=D(2017, 1, 14, 12),
                  events=[
                      Event(event_id="icu1", timestamp=D(2017, 1, 11, 2), kind=EventKind.visit, name="ICU stay",
                            text="Medical Intensive Care Unit (MICU); until 2017-01-12 08:00:00"),
                      lab("hr1", D(2017, 1, 11, 3), "Heart rate", "112", "bpm"),
                      note("adm-note", D(2017, 1, 13, 9), "Admitted with pneumonia, treated with antibiotics."),
                  ]),
        office_visit(3, D(2018, 7, 21), a1c="7.4"),
        office_visit(4, D(2019, 11, 2)),
        office_visit(5, D(2020, 4, 14), a1c="6.8"),
        office_visit(6, D(2021, 2, 3), extra=[lab("hgb6", D(2021, 2, 3, 10), "Hemoglobin", "13.1", "g/dL")]),
        Encounter(encounter_id="adm2", type="Inpatient Visit", start=D(2021, 9, 5, 18), end=D(2021, 9, 8, 10),
                  events=[lab("hr2", D(2021, 9, 5, 19), "Heart rate", "88", "bpm"),
                          note("adm2-note", D(2021, 9, 7, 9), "Admitted for elective hip replacement.")]),
        office_visit(7, D(2022, 6, 30)),
    ]
    return PatientRecord(patient_id="temporal-1", encounters=encounters)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("temporal")
    write_release_xml(hand_built_record(), folder / "ehrs" / "temporal-1.xml")
    builder = IndexBuilder(IndexSettings(index_dir=folder / "indexes"))
    builder.build(open_data_folder(folder))
    return load_index(builder.settings.index_dir, "temporal-1"), builder.embedder


def top_chunk(index, embedder, question, anchor=None):
    ranked = TemporalRetriever(index, embedder, time_anchor=anchor).rank(question)
    return index.chunks[ranked[0][0]]


def test_without_cues_temporal_is_exactly_hybrid(built):
    index, embedder = built
    for question in ("What was the hemoglobin A1c?", "Summarize the pneumonia admission.",
                     "Which medications treat diabetes?", "heart rate"):
        for anchor in (None, D(2019, 1, 1)):
            temporal = make_retriever("temporal", index, embedder=embedder, time_anchor=anchor)
            hybrid = make_retriever("hybrid", index, embedder=embedder, time_anchor=anchor)
            assert parse_temporal_cues(question, anchor).empty
            assert np.array_equal(temporal.scores(question), hybrid.scores(question))
            assert temporal.rank(question) == hybrid.rank(question)


def test_direction_orders_matching_chunks_by_time(built):
    index, embedder = built
    recent = top_chunk(index, embedder, "What was the most recent hemoglobin A1c?")
    assert "a1c5" in recent.event_ids  # 2020, not the later plain-hemoglobin visit of 2021
    first = top_chunk(index, embedder, "What was the patient's first recorded hemoglobin A1c?")
    assert "a1c1" in first.event_ids
    # the anchor hides what came later: "most recent" as of 2019 is the 2018 value
    as_of_2019 = top_chunk(index, embedder, "What was the most recent hemoglobin A1c?", anchor=D(2019, 1, 1))
    assert "a1c3" in as_of_2019.event_ids


def test_direction_does_not_let_unrelated_recent_chunks_in_front(built):
    index, embedder = built
    ranked = TemporalRetriever(index, embedder).rank("What was the most recent hemoglobin A1c?")
    top_three = [index.chunks[p] for p, _ in ranked[:3]]
    assert all(any(ev.name == "Hemoglobin A1c" for ev in c.events) for c in top_three)


def test_dates_and_visits_promote_overlapping_chunks(built):
    index, embedder = built
    on_date = top_chunk(index, embedder, "What was the hemoglobin A1c on 2018-07-21?")
    assert on_date.encounter_id == "office3"
    ranked = TemporalRetriever(index, embedder).rank("Summarize the admission of 2017-01-10.")
    assert {index.chunks[p].encounter_id for p, _ in ranked[:1]} == {"adm1"}
    in_range = TemporalRetriever(index, embedder).rank("Notes between 2019-01-01 and 2020-12-31?")
    assert {index.chunks[p].encounter_id for p, _ in in_range[:2]} <= {"office4", "office5"}
    assert "hr1" in top_chunk(index, embedder, "What was the maximum heart rate in the first icu visit?").event_ids
    assert "hr1" in top_chunk(index, embedder, "What was the heart rate in the first hospital visit?").event_ids
    assert "hr2" in top_chunk(index, embedder, "What was the heart rate in the last hospital visit?").event_ids
    # as of 2020 the last hospital visit is the first one
    assert "hr1" in top_chunk(index, embedder, "What was the heart rate in the last hospital visit?",
                              anchor=D(2020, 1, 1)).event_ids
    last_month = TemporalRetriever(index, embedder, time_anchor=D(2022, 7, 15)).rank("Any notes last month?")
    assert index.chunks[last_month[0][0]].encounter_id == "office7"


def test_time_arrays_are_cached_and_find_icu_stays(built):
    index, _ = built
    arrays = time_arrays(index)
    assert time_arrays(index) is arrays
    assert arrays.visits["icu"] == [(D(2017, 1, 11, 2), D(2017, 1, 12, 8))]
    assert [s for s, _ in arrays.visits["hospital"]] == [D(2017, 1, 10, 14), D(2021, 9, 5, 18)]
    assert len(arrays.chunk_start) == len(index.chunks)


def test_temporal_is_a_registered_strategy(built):
    index, _ = built
    assert "temporal" in strategy_names()
    from medalign_rag.errors import MedalignError

    with pytest.raises(MedalignError, match="embedding model"):
        make_retriever("temporal", index)
