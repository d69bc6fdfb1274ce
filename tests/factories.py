"""Small random timelines for tests of the stages after `records`."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord

LABS = [("LOINC/4548-4", "Hemoglobin A1c", "%"), ("LOINC/2160-0", "Creatinine", "mg/dL"),
        ("LOINC/2951-2", "Sodium", "mmol/L"), ("LOINC/718-7", "Hemoglobin", "g/dL")]
WORDS = "patient reports chest pain fatigue dyspnea stable improved metformin lisinopril follow-up".split()


def make_record(seed: int = 0, n_encounters: int = 6, max_events: int = 40, note_words: int = 60,
                patient_id: str = "p1") -> PatientRecord:
    rng = random.Random(seed)
    start = datetime(2015, 1, 1, 8, 0)
    encounters = []
    for e in range(n_encounters):
        start = start + timedelta(days=rng.randint(5, 200))
        events = []
        stamp = start
        for i in range(rng.randint(0 if e else 1, max_events)):
            if rng.random() < 0.4:
                stamp = stamp + timedelta(minutes=rng.randint(1, 600))
            kind = rng.choice([EventKind.measurement, EventKind.measurement, EventKind.condition, EventKind.drug,
                               EventKind.note])
            eid = f"{patient_id}-{e}-{i}"
            if kind == EventKind.measurement:
                code, name, unit = rng.choice(LABS)
                events.append(Event(event_id=eid, timestamp=stamp, kind=kind, code=code, name=name,
                                    value=f"{rng.uniform(0.5, 150):.1f}", unit=unit))
            elif kind == EventKind.note:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, note_words)))
                events.append(Event(event_id=eid, timestamp=stamp, kind=kind, name="progress note", text=text))
            else:
                events.append(Event(event_id=eid, timestamp=stamp, kind=kind, code=f"ICD10CM/E{rng.randint(10, 99)}",
                                    name=rng.choice(["Type 2 diabetes", "Hypertension", "metformin 500 mg"])))
        encounters.append(Encounter(encounter_id=f"{patient_id}-enc{e}", type=rng.choice(["Outpatient", "Inpatient"]),
                                    start=start, end=stamp, events=events))
    return PatientRecord(patient_id=patient_id, encounters=encounters)
