"""Clinician-style instructions about a finished record, with gold answers and gold evidence read off the record.

Gold evidence is the event that first held each fact: a measurement, a diagnosis, a prescription, or the note
written at the visit that made the decision. Copied-forward notes (see `notes.CopyForward`) repeat spans of
earlier notes; a copy never becomes evidence, and `copies_of` lists the copies of an evidence note.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Sequence

from medalign_rag.datasets.synthetic.notes import iso_day
from medalign_rag.datasets.synthetic.simulator import Simulator
from medalign_rag.datasets.synthetic.state import OfficeFact
from medalign_rag.datasets.synthetic.vocabulary import CONDITIONS, DRUG_BY_CODE, DRUGS, MEASURES
from medalign_rag.records.model import Event, EventKind, PatientRecord
from medalign_rag.records.serialize import event_line_numbers, render_record
from medalign_rag.tokenization import TokenCounter, count_many

TAXONOMY_GROUP = "information retrieval"  # every template here retrieves and summarizes


def evidence_depths(record: PatientRecord, counter: TokenCounter) -> tuple[int, dict[str, int]]:
    """(record tokens, tokens from each event's line to the end of the record) in the prompt rendering.

    The prompt shows the record without ids (`render_record(include_ids=False)`); a context cut from the front
    keeps an event exactly when its suffix length fits the budget. Lines are counted separately and scaled to
    the whole text's count, so the numbers add up to the record's length.
    """
    text = render_record(record, include_ids=False)
    lines = text.split("\n")
    counts = count_many(counter, [line + "\n" for line in lines])
    suffix = [0] * (len(lines) + 1)
    for index in range(len(lines) - 1, -1, -1):
        suffix[index] = suffix[index + 1] + counts[index]
    event_lines = event_line_numbers(record, include_ids=False)
    event_ids = [event.event_id for _, event in record.iter_events()]
    total = counter.count(text)
    scale = total / suffix[0] if suffix[0] else 0.0
    return total, {eid: round(suffix[line] * scale) for eid, line in zip(event_ids, event_lines)}



@dataclass
class Candidate:
    template: str
    category: str  # MedAlign taxonomy subcategory
    question: str
    answer: str
    evidence: list[str]
    anchor: datetime
    details: dict = field(default_factory=dict)


class InstructionWriter:
    """Clinician-style instructions with answers and evidence read off the finished record."""

    def __init__(self, sim: Simulator, record: PatientRecord, rng: random.Random) -> None:
        self.sim = sim
        self.record = record
        self.rng = rng
        self.events = [event for _, event in record.iter_events()]
        self.position = {event.event_id: index for index, event in enumerate(self.events)}
        self.end = record.last_timestamp or sim.start

    # ------------------------------------------------------------------ helpers

    def copies_of(self, event_ids: Sequence[str]) -> dict[str, list[str]]:
        """For each of `event_ids` that later notes copied a span of: the ids of those notes, in record order."""
        copies: dict[str, list[str]] = {}
        for copy, source in self.sim.note_copies:
            if source.event_id in event_ids:
                copies.setdefault(source.event_id, []).append(copy.event_id)
        return {eid: sorted(ids, key=self.position.__getitem__) for eid, ids in copies.items()}

    def _series(self, code: str, until: datetime | None = None) -> list[Event]:
        return [ev for ev in self.events if ev.code == code and (until is None or ev.timestamp <= until)]

    def _old_part(self, items: list, share: float = 0.5) -> list:
        """The older `share` of items (at least one), which a context cut from the front is likely to lose."""
        return items[: max(1, int(len(items) * share))]

    # ------------------------------------------------------------------ templates

    def most_recent(self, key: str, anchor: datetime | None = None) -> Candidate | None:
        spec = MEASURES[key]
        anchor = anchor or self.end
        series = self._series(spec.code, anchor)
        if not series:
            return None
        last = series[-1]
        return Candidate(
            "most_recent_value", "retrieve laboratory studies", f"What was the most recent {spec.label}?",
            f"{spec.say(float(last.value))} on {iso_day(last.timestamp)}", [last.event_id], anchor,
            {"code": spec.code, "value": last.value, "unit": last.unit, "date": iso_day(last.timestamp)},
        )

    def earlier_most_recent(self, key: str) -> Candidate | None:
        """The same question asked at an earlier time: the answer is the latest value as of that anchor."""
        spec = MEASURES[key]
        series = self._series(spec.code)
        if len(series) < 3:
            return None
        # The anchor is the end of the encounter that measured it, which must come before the record's end.
        ends = {ev.event_id: enc.end or ev.timestamp for enc, ev in self.record.iter_events()}
        earlier = [ev for ev in series[1:-1] if ends[ev.event_id] < self.end]
        middle = [ev for ev in earlier if 0.25 <= self.position[ev.event_id] / len(self.events) <= 0.75] or earlier
        if not middle:
            return None
        pick = self.rng.choice(middle)
        anchor = ends[pick.event_id]
        candidate = self.most_recent(key, anchor)
        if candidate is None:
            return None
        candidate.template = "most_recent_value_earlier_anchor"
        return candidate

    def value_on_date(self, key: str) -> Candidate | None:
        spec = MEASURES[key]
        series = self._series(spec.code)
        per_day: dict[str, int] = {}
        for ev in series:
            per_day[iso_day(ev.timestamp)] = per_day.get(iso_day(ev.timestamp), 0) + 1
        unique = [ev for ev in series if per_day[iso_day(ev.timestamp)] == 1]
        if not unique:
            return None
        pick = self.rng.choice(self._old_part(unique, 0.5))
        return Candidate(
            "value_on_date", "retrieve laboratory studies",
            f"What was the patient's {spec.label} on {iso_day(pick.timestamp)}?", spec.say(float(pick.value)),
            [pick.event_id], self.end,
            {"code": spec.code, "value": pick.value, "unit": pick.unit, "date": iso_day(pick.timestamp)},
        )

    def first_value(self, key: str) -> Candidate | None:
        spec = MEASURES[key]
        series = self._series(spec.code)
        if not series:
            return None
        first = series[0]
        return Candidate(
            "first_value", "retrieve laboratory studies",
            f"What was the patient's first recorded {spec.label}, and when was it measured?",
            f"{spec.say(float(first.value))} on {iso_day(first.timestamp)}", [first.event_id], self.end,
            {"code": spec.code, "value": first.value, "unit": first.unit, "date": iso_day(first.timestamp)},
        )

    def first_diagnosis(self, key: str) -> Candidate | None:
        spec = CONDITIONS[key]
        matches = [ev for ev in self.events if ev.kind is EventKind.condition and ev.code
                   and (ev.code == spec.family or ev.code.startswith(spec.family + "."))]
        if not matches:
            return None
        first = matches[0]
        developed = self.sim.onset.get(key, 0.0) > 0.0
        question = (f"When was {spec.label} first diagnosed?" if developed
                    else f"When was {spec.label} first documented in the record?")
        return Candidate(
            "first_diagnosis", "retrieve medical history", question,
            f"{iso_day(first.timestamp)} ({first.name}, {first.code.split('/')[1]})", [first.event_id], self.end,
            {"code": first.code, "date": iso_day(first.timestamp), "developed_in_record": developed},
        )

    def visit_count(self) -> Candidate | None:
        for code, words in (("Visit/ER", "emergency department visits"), ("Visit/IP", "hospital admissions"),
                            ("Visit/OP", "office visits")):
            visits = [ev for ev in self.events if ev.kind is EventKind.visit and ev.code == code]
            if visits:
                break
        else:
            return None
        # A window from just after one visit to just before another, so its edges never cut a visit's day.
        first_index = self.rng.randrange(len(visits))
        last_index = self.rng.randrange(first_index, min(len(visits), first_index + 4))
        earliest = (visits[first_index - 1].timestamp + timedelta(days=1)) if first_index else self.sim.start
        latest = visits[last_index + 1].timestamp - timedelta(days=1) if last_index + 1 < len(visits) else self.end
        low = earliest.date() + timedelta(days=self.rng.randint(0, max(0, (visits[first_index].timestamp.date()
                                                                             - earliest.date()).days)))
        high_span = max(0, (latest.date() - visits[last_index].timestamp.date()).days)
        high = visits[last_index].timestamp.date() + timedelta(days=self.rng.randint(0, high_span))
        inside = [ev for ev in visits if low <= ev.timestamp.date() <= high]
        dates = [iso_day(ev.timestamp) for ev in inside]
        noun = words if len(inside) != 1 else words[:-1]
        return Candidate(
            "count_visits", "retrieve appointment information",
            f"How many {words} did the patient have between {low.isoformat()} and {high.isoformat()}?",
            f"{len(inside)} {noun} ({', '.join(dates)})", [ev.event_id for ev in inside], self.end,
            {"visit_code": code, "count": len(inside), "start": low.isoformat(), "end": high.isoformat()},
        )

    def medication_history(self, key: str) -> Candidate | None:
        spec = CONDITIONS[key]
        firsts: dict[str, Event] = {}
        for ev in self.events:
            drug = DRUG_BY_CODE.get(ev.code or "") if ev.kind is EventKind.drug else None
            if drug is not None and key in drug.treats and drug.ingredient not in firsts:
                firsts[drug.ingredient] = ev
        if not firsts:
            return None
        parts = [f"{ev.name} (first prescribed {iso_day(ev.timestamp)})" for ev in firsts.values()]
        return Candidate(
            "medication_history", "retrieve medication information",
            f"Which medications has the patient been prescribed for {spec.med_label}, and when were they started?",
            "; ".join(parts) + ".", [ev.event_id for ev in firsts.values()], self.end,
            {"condition": key, "ingredients": list(firsts),
             "starts": [iso_day(ev.timestamp) for ev in firsts.values()]},
        )

    def stay_summary(self) -> Candidate | None:
        admissions = [stay for stay in self.sim.stays if stay.kind == "admission"]
        stays = admissions or self.sim.stays
        if not stays:
            return None
        stay = stays[0] if self.rng.random() < 0.5 else self.rng.choice(stays)
        what = "admission" if stay.kind == "admission" else "emergency department visit"
        return Candidate(
            "summarize_stay", "retrieve medical history", f"Summarize the {what} of {iso_day(stay.start)}.",
            stay.summary, [stay.diagnosis.event_id, stay.note.event_id], self.end,
            {"stay": stay.kind, "start": iso_day(stay.start), "end": iso_day(stay.end), "diagnosis": stay.problem.code},
        )

    def _old_office_visit(self) -> OfficeFact | None:
        visits = self.sim.office_visits
        return self.rng.choice(self._old_part(visits, 0.5)) if visits else None

    def office_summary(self) -> Candidate | None:
        visit = self._old_office_visit()
        if visit is None:
            return None
        return Candidate(
            "summarize_visit", "retrieve medical history", f"Summarize the office visit of {iso_day(visit.start)}.",
            visit.summary, [visit.note.event_id], self.end, {"date": iso_day(visit.start)},
        )

    def blood_pressure(self) -> Candidate | None:
        visit = self._old_office_visit()
        if visit is None:
            return None
        return Candidate(
            "vitals_on_date", "retrieve vitals",
            f"What was the patient's blood pressure at the office visit on {iso_day(visit.start)}?",
            f"{visit.sbp.value}/{visit.dbp.value} mmHg", [visit.sbp.event_id, visit.dbp.event_id], self.end,
            {"systolic": visit.sbp.value, "diastolic": visit.dbp.value, "date": iso_day(visit.start)},
        )

    def stop_reason(self) -> Candidate | None:
        stops = [stop for stop in self.sim.stops if stop.note is not None]
        if not stops:
            return None
        stop = self.rng.choice(stops)
        evidence = [stop.note.event_id, *(draft.event_id for draft in stop.support)]  # type: ignore[union-attr]
        return Candidate(
            "medication_stopped", "retrieve medication information",
            f"Why was {stop.ingredient} stopped, and when?",
            f"{stop.ingredient.capitalize()} was stopped on {iso_day(stop.when)} because of {stop.reason}.",
            evidence, self.end, {"ingredient": stop.ingredient, "date": iso_day(stop.when)},
        )

    # ------------------------------------------------------------------ selection

    def write(self) -> list[Candidate]:
        rng = self.rng
        sim = self.sim
        wanted = rng.randint(6, 10)
        chosen: list[Candidate] = []
        a1c = self.most_recent("a1c")
        if a1c is not None:
            chosen.append(a1c)

        lab_choices = [key for key in ("creatinine", "potassium", "sodium", "hemoglobin", "glucose", "ldl", "tsh",
                                       "a1c") if self._series(MEASURES[key].code)]
        developed = [key for key in sim.diagnosed if sim.onset.get(key, 0.0) > 0.0]
        conditions = developed or list(sim.diagnosed)
        treated = [key for key in sim.diagnosed if any(key in d.treats for d in DRUGS.values())]
        pick = rng.choice
        makers: list[Callable[[], Candidate | None]] = [
            lambda: self.value_on_date(pick(lab_choices)) if lab_choices else None,
            lambda: self.first_diagnosis(pick(conditions)) if conditions else None,
            self.visit_count,
            lambda: self.medication_history(pick(treated)) if treated else None,
            self.stay_summary,
            self.blood_pressure,
            self.stop_reason,
            lambda: self.first_value(pick(lab_choices)) if lab_choices else None,
            lambda: self.earlier_most_recent(pick(lab_choices)) if lab_choices else None,
            self.office_summary,
            lambda: self.most_recent(pick([k for k in lab_choices if k != "a1c"] or ["a1c"])),
            lambda: self.value_on_date(pick(lab_choices)) if lab_choices else None,
        ]
        rng.shuffle(makers)
        for make in makers:
            if len(chosen) >= wanted:
                break
            candidate = make()
            if candidate is None or any(c.question == candidate.question for c in chosen):
                continue
            chosen.append(candidate)
        return chosen

