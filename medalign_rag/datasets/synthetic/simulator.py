"""The simulation of one patient: when they come in, what is measured and decided at each visit, and the record.

A record is steered to its length tier's target by a running estimate of its rendered size: encounters are
scheduled over the planned span until the estimate reaches the target. Conditions show at a planned point of that
progress and are diagnosed at the next visit that looks for them; treatment follows guideline-like steps.
"""

from __future__ import annotations

import random
from datetime import date, datetime, time, timedelta
from typing import Callable, Sequence

from medalign_rag.datasets.synthetic.notes import (
    CopyForward,
    admission_summary,
    discharge_summary,
    dx_line,
    echo_report,
    ed_note,
    ed_visit_summary,
    endoscopy_note,
    hp_note,
    join_words,
    knee_arthroplasty_note,
    office_note,
    office_summary,
    one_step_line,
    radiology_report,
    step_phrase,
    ward_note,
)
from medalign_rag.datasets.synthetic.physiology import Physiology
from medalign_rag.datasets.synthetic.state import EncounterDraft, EventDraft, OfficeFact, PatientState, Stay, Stop
from medalign_rag.datasets.synthetic.vocabulary import (
    ACUTE,
    ACUTE_LABS,
    ACUTE_PROCEDURES,
    ANCHOR_CONDITIONS,
    BMP,
    CBC,
    CLINICIANS,
    CLINICS,
    CONDITIONS,
    DRUGS,
    E_AND_M,
    EMERGENCY_DOCTORS,
    ETHNICITIES,
    HOSPITALISTS,
    IMAGING,
    LAB_DIAGNOSED,
    LENGTH_TIERS,
    LIPIDS,
    MEASURES,
    NOTE_CODES,
    ONE_STEP_TITRATION,
    RACES,
    TREATMENT_LADDERS,
    VITALS,
    Acute,
    Drug,
    titrated_glargine,
)
from medalign_rag.records.model import Demographics, Encounter, Event, EventKind, PatientRecord
from medalign_rag.records.serialize import render_encounter, render_person

# The simulated calendar ends here; nothing reads the clock, so output never depends on when it was made.
CALENDAR_END = datetime(2023, 12, 31, 0, 0)
# Rendered release XML with these vocabularies runs at about this many characters per cl100k token.
CHARS_PER_TOKEN = 3.15


def clock(day: date, hour: int, minute: int) -> datetime:
    return datetime.combine(day, time(hour, minute))


class Simulator(PatientState):
    """One patient's life in the health system: the visits it schedules, the care decisions made at each, and the
    record they leave. Physiology (`Physiology`) and prose (`notes`) read the state these decisions change.
    """

    def __init__(self, rng: random.Random, patient_id: str, tier: str,
                 copy_forward: CopyForward | None = None) -> None:
        self.rng = rng
        self.patient_id = patient_id
        self.tier_name = tier
        self.tier = LENGTH_TIERS[tier]
        self.target_tokens = rng.randint(*self.tier.tokens)
        span_days = int(rng.uniform(*self.tier.years) * 365.25)
        self.planned_end = CALENDAR_END - timedelta(days=rng.randint(0, 240))
        self.start = self.planned_end - timedelta(days=span_days)

        self.female = rng.random() < 0.52
        low_age = 30 if tier == "short" else 42
        age = rng.randint(low_age, 74)
        self.birthdate = datetime(self.start.year - age, rng.randint(1, 12), rng.randint(1, 28))
        self.demographics = Demographics(
            birthdate=self.birthdate,
            gender="FEMALE" if self.female else "MALE",
            race=rng.choice(RACES),
            ethnicity=rng.choice(ETHNICITIES),
        )
        self.person_xml = render_person(PatientRecord(patient_id=patient_id, demographics=self.demographics))
        self.pcp = rng.choice(CLINICIANS)
        self.clinic = rng.choice(CLINICS)

        self.onset = self._plan_conditions()  # condition key -> progress (0..1) at which it shows
        self.diagnosed: dict[str, datetime] = {}
        self.traits = {
            "ace_cough": rng.random() < 0.4,
            "thiazide_hyponatremia": rng.random() < 0.5,
        }
        self.body = Physiology(self)

        self.active: dict[str, Drug] = {}  # ingredient -> current product
        self.active_since: dict[str, datetime] = {}
        self.stopped: dict[str, Stop] = {}
        self.last_change: dict[str, datetime] = {}  # condition key -> last treatment change
        self.latest: dict[str, tuple[datetime, float, EventDraft]] = {}
        self.acute: tuple[Acute, float] | None = None  # current acute problem and its severity
        self.bleed_at: datetime | None = None
        self.last_annual: datetime | None = None
        self.knee_replaced = False
        self.glargine_units = 14

        self.encounters: list[Encounter] = []
        self.n_events = 0
        self.estimated_tokens = 0.0
        self.stops: list[Stop] = []
        self.stays: list[Stay] = []
        self.office_visits: list[OfficeFact] = []
        self.copy_forward = copy_forward
        self.note_copies: list[tuple[EventDraft, EventDraft]] = []  # (a note, the earlier note it copied a span of)

    # ------------------------------------------------------------------ planning

    def _plan_conditions(self) -> dict[str, float]:
        rng = self.rng
        n_conditions = rng.randint(*self.tier.n_conditions)
        chosen = [self._weighted([(k, CONDITIONS[k].weight) for k in ANCHOR_CONDITIONS])]
        while len(chosen) < n_conditions:
            pool = [(c.key, c.weight) for c in CONDITIONS.values() if c.key not in chosen]
            if "ckd" in [k for k, _ in pool] and not {"hypertension", "t2dm"} & set(chosen):
                pool = [(k, w) for k, w in pool if k != "ckd"]
            chosen.append(self._weighted(pool))
        onset: dict[str, float] = {}
        for key in chosen:
            if key == "ckd":
                onset[key] = rng.uniform(0.25, 0.7)  # kidney function declines within the record
            elif rng.random() < 0.55:
                onset[key] = 0.0
            else:
                onset[key] = rng.uniform(0.08, 0.65)
        return onset

    def _weighted(self, pool: list[tuple[str, float]]) -> str:
        total = sum(weight for _, weight in pool)
        pick = self.rng.random() * total
        for key, weight in pool:
            pick -= weight
            if pick <= 0:
                return key
        return pool[-1][0]

    # ------------------------------------------------------------------ record plumbing

    def _open(self, encounter_type: str, start: datetime) -> EncounterDraft:
        return EncounterDraft(type=encounter_type, start=start)

    def _close(self, draft: EncounterDraft, end: datetime) -> None:
        """Fix event order and ids, and count the encounter's length toward the patient's target."""
        draft.events.sort(key=lambda ev: ev.timestamp)  # stable: same-time events keep their written order
        encounter_id = f"{self.patient_id}-v{len(self.encounters):04d}"
        events = []
        for item in draft.events:
            item.event_id = f"{self.patient_id}-e{self.n_events:05d}"
            self.n_events += 1
            events.append(
                Event(event_id=item.event_id, timestamp=item.timestamp, kind=item.kind, code=item.code,
                      name=item.name, value=item.value, unit=item.unit, text=item.text)
            )
        encounter = Encounter(encounter_id=encounter_id, type=draft.type, start=draft.start, end=end, events=events)
        self.encounters.append(encounter)
        rendered = render_encounter(encounter, include_ids=False, person=self.person_xml)
        self.estimated_tokens += len(rendered) / CHARS_PER_TOKEN

    def _measure_into(self, enc: EncounterDraft, when: datetime, keys: Sequence[str]) -> dict[str, float]:
        values = self.body.panel(keys, when)
        for key in keys:
            spec = MEASURES[key]
            draft = enc.add(when, EventKind.measurement, code=spec.code, name=spec.name, value=spec.fmt(values[key]),
                            unit=spec.unit)
            self.latest[key] = (when, values[key], draft)
        return values

    def _prescribe(self, enc: EncounterDraft, when: datetime, drug_key: str | Drug, *,
                   chronic: bool = True) -> Drug:
        drug = DRUGS[drug_key] if isinstance(drug_key, str) else drug_key
        enc.add(when, EventKind.drug, code=drug.code, name=drug.name, value=drug.sig)
        if chronic:
            if drug.ingredient not in self.active:
                self.active_since[drug.ingredient] = when
            self.active[drug.ingredient] = drug
            self.stopped.pop(drug.ingredient, None)
        return drug

    def _treatment_change(self, enc: EncounterDraft, when: datetime, key: str, drug_key: str | Drug) -> Drug:
        """Prescribe a new drug or dose for condition `key`; its next change waits a while from now."""
        self.last_change[key] = when
        return self._prescribe(enc, when, drug_key)

    def _stop(self, ingredient: str, when: datetime, reason: str, support: Sequence[EventDraft] = ()) -> Stop:
        self.active.pop(ingredient)
        stop = Stop(ingredient=ingredient, when=when, reason=reason, support=list(support))
        self.stopped[ingredient] = stop
        self.stops.append(stop)
        return stop

    def _procedure(self, enc: EncounterDraft, when: datetime, code: str, name: str) -> EventDraft:
        return enc.add(when, EventKind.procedure, code=code, name=name)

    def _note(self, enc: EncounterDraft, when: datetime, kind: str, text: str) -> EventDraft:
        code, name = NOTE_CODES[kind]
        if self.copy_forward is None:
            return enc.add(when, EventKind.note, code=code, name=name, text=text)
        written, source = self.copy_forward.copy_into(kind, text)
        note = enc.add(when, EventKind.note, code=code, name=name, text=written)
        self.copy_forward.remember(kind, text, note)
        if source is not None:
            self.note_copies.append((note, source))
        return note

    def _condition(self, enc: EncounterDraft, when: datetime, code: str, name: str) -> EventDraft:
        return enc.add(when, EventKind.condition, code=code, name=name)

    def _condition_code(self, key: str) -> tuple[str, str]:
        if key == "t2dm" and "a1c" in self.latest and self.latest["a1c"][1] >= 9.0:
            return "ICD10CM/E11.65", "Type 2 diabetes mellitus with hyperglycemia"
        if key == "ckd" and "egfr" in self.latest and self.latest["egfr"][1] < 45:
            return "ICD10CM/N18.32", "Chronic kidney disease, stage 3b"
        spec = CONDITIONS[key]
        return spec.code, spec.name

    # ------------------------------------------------------------------ the timeline

    def run(self) -> PatientRecord:
        rng = self.rng
        when = clock(self.start.date(), rng.randint(8, 15), rng.choice((0, 15, 30, 45)))
        end = self._office_visit(when, first=True)
        while self.estimated_tokens < self.target_tokens:
            day = self._next_day(end)
            kind = self._next_kind()
            if kind == "emergency":
                end = self._emergency_visit(clock(day, rng.randint(0, 23), rng.choice((5, 20, 35, 50))))
            elif kind == "elective":
                end = self._admission(clock(day, 7, 0), ACUTE["knee_replacement"], from_ed=None)
            elif kind == "lab":
                end = self._lab_visit(clock(day, rng.randint(7, 10), rng.choice((0, 10, 20, 30, 40, 50))))
            else:
                end = self._office_visit(clock(day, rng.randint(8, 16), rng.choice((0, 15, 30, 45))))
        return PatientRecord(patient_id=self.patient_id, demographics=self.demographics, encounters=self.encounters)

    def _next_day(self, after: datetime) -> date:
        """Spread the remaining encounters over the remaining planned span (the density adapts as lengths show)."""
        done = max(1, len(self.encounters))
        per_encounter = self.estimated_tokens / done
        remaining = max(1.0, (self.target_tokens - self.estimated_tokens) / per_encounter)
        remaining_days = (self.planned_end - after).days
        mean_gap = max(12.0, remaining_days / remaining)
        gap = max(3, int(mean_gap * self.rng.uniform(0.35, 1.65)))
        if remaining_days > 3:
            gap = min(gap, remaining_days)  # random spread must not push the record past its planned end
        return (after + timedelta(days=gap)).date()

    def _next_kind(self) -> str:
        rng = self.rng
        emergency_rate = self.tier.emergency_rate + 0.05 * sum(
            1 for key in ("copd", "heart_failure", "t2dm") if key in self.diagnosed
        )
        if self.shows("osteoarthritis") and "osteoarthritis" in self.diagnosed and not self.knee_replaced:
            if self.progress > 0.4 and rng.random() < 0.15 and self.tier_name != "short":
                self.knee_replaced = True
                return "elective"
        pick = rng.random()
        if pick < emergency_rate:
            return "emergency"
        if pick < emergency_rate + self.tier.lab_rate:
            return "lab"
        return "office"

    # ------------------------------------------------------------------ office visits

    def _labs_due(self, when: datetime, annual: bool, new_keys: Sequence[str]) -> list[str]:
        def stale(key: str, days: int) -> bool:
            return key not in self.latest or (when - self.latest[key][0]).days >= days

        keys: list[str] = []
        if annual:
            keys += [*BMP, *CBC, *LIPIDS, "a1c"]
            if self.shows("hypothyroidism") or self.rng.random() < 0.3:
                keys.append("tsh")
        else:
            if ("t2dm" in self.diagnosed and stale("a1c", 80)) or (self.shows("t2dm") and stale("a1c", 200)):
                keys.append("a1c")
            if (("ckd" in self.diagnosed or "hypertension" in self.diagnosed) and stale("creatinine", 150)) or (
                self.shows("ckd") and stale("creatinine", 120)
            ):
                keys += list(BMP)
            if "hypothyroidism" in self.diagnosed and stale("tsh", 150):
                keys.append("tsh")
            if "hyperlipidemia" in self.diagnosed and stale("ldl", 300):
                keys += list(LIPIDS)
        for key in new_keys:
            keys += list(LAB_DIAGNOSED.get(key, ()))
        if self.shows("t2dm") and "t2dm" in self.diagnosed and (annual or stale("uacr", 330)):
            keys.append("uacr")
        ordered: list[str] = []
        for key in keys:
            if key not in ordered:
                ordered.append(key)
        # panel order as a lab reports it
        return sorted(ordered, key=list(MEASURES).index)

    def _office_visit(self, start: datetime, *, first: bool = False) -> datetime:
        rng = self.rng
        enc = self._open("Office Visit", start)
        enc.add(start, EventKind.visit, code="Visit/OP", name="Office Visit", value=self.clinic)
        # The condition shows first, then the next visit diagnoses it: this visit if its onset has come.
        new_keys = [key for key, at in self.onset.items() if key not in self.diagnosed and self.progress >= at]
        lab_triggered = [k for k in new_keys if k in LAB_DIAGNOSED]
        annual = first or self.last_annual is None or (start - self.last_annual).days >= 330
        if annual:
            self.last_annual = start
        reason = self._visit_reason(start, first, annual, new_keys)

        if first:
            # Conditions the patient arrives with are already treated: their values reflect the established drugs.
            for key in new_keys:
                if self.onset[key] == 0.0:
                    for drug_key in CONDITIONS[key].established:
                        self.active.setdefault(DRUGS[drug_key].ingredient, DRUGS[drug_key])
                        self.active_since.setdefault(DRUGS[drug_key].ingredient, start)
        t_vitals = start + timedelta(minutes=8)
        vitals = self._measure_into(enc, t_vitals, [*VITALS, "weight", "bmi"])
        t_labs = start + timedelta(minutes=35)
        previous = {key: (value[0], value[1]) for key, value in self.latest.items()}
        lab_keys = self._labs_due(start, annual, lab_triggered)
        labs = self._measure_into(enc, t_labs, lab_keys) if lab_keys else {}

        t_orders = start + timedelta(minutes=50)
        plan = self._manage(enc, t_orders, new_keys, vitals, labs, first=first, annual=annual)

        t_dx = start + timedelta(minutes=45)
        for key in self.diagnosed:
            code, name = self._condition_code(key)
            self._condition(enc, t_dx, code, name)
        e_and_m = E_AND_M["office_new" if first else "office"]
        self._procedure(enc, t_dx, *e_and_m)
        if lab_keys:
            self._procedure(enc, t_labs, *E_AND_M["venipuncture"])
        if annual and start.month in (9, 10, 11, 12):
            self._procedure(enc, t_orders, *E_AND_M["flu"])
            plan.append("Health maintenance: influenza vaccine given today.")
        if annual and "t2dm" in self.diagnosed and rng.random() < 0.5:
            self._procedure(enc, t_orders, *E_AND_M["retina"])
            plan.append("Diabetic retinal screening photographs taken today; no retinopathy on preliminary read.")
        if "copd" in new_keys:
            self._procedure(enc, t_orders, *E_AND_M["spirometry"])

        t_note = start + timedelta(minutes=70)
        text = office_note(self, start, reason, vitals, labs, previous, plan, first=first, annual=annual)
        note = self._note(enc, t_note, "progress", text)
        for stop in self.stops:
            if stop.note is None:
                stop.note = note
        sbp_draft, dbp_draft = self.latest["sbp"][2], self.latest["dbp"][2]
        summary = office_summary(start, reason, vitals, labs, plan)
        self.office_visits.append(OfficeFact(start, summary, note, sbp_draft, dbp_draft))
        end = start + timedelta(minutes=rng.choice((75, 80, 90)))
        self._close(enc, end)
        return end

    def _visit_reason(self, start: datetime, first: bool, annual: bool, new_keys: Sequence[str]) -> str:
        if first:
            return "a new patient visit to establish primary care"
        if annual:
            return "an annual physical examination"
        if "osteoarthritis" in new_keys:
            return "right knee pain worse with stairs for several months"
        if "depression" in new_keys:
            return "low mood, poor sleep and loss of interest for two months"
        if "gerd" in new_keys:
            return "burning epigastric pain after meals"
        if "copd" in new_keys:
            return "chronic cough and exertional dyspnea"
        if "heart_failure" in new_keys:
            return "exertional dyspnea and ankle swelling"
        if "atrial_fibrillation" in new_keys:
            return "intermittent palpitations"
        if self.stays and self.stays[-1].kind == "admission" and (start - self.stays[-1].end).days <= 60:
            return f"follow-up after the hospital stay for {self.stays[-1].problem.label}"
        return self.rng.choice((
            "follow-up of chronic conditions",
            "routine follow-up and medication review",
            "follow-up of blood pressure and lab results",
            "a scheduled chronic disease management visit",
        ))

    def _manage(self, enc: EncounterDraft, when: datetime, new_keys: Sequence[str], vitals: dict[str, float],
                labs: dict[str, float], *, first: bool, annual: bool) -> list[str]:
        """Care decisions for this visit; writes the orders and returns assessment-and-plan lines."""
        plan: list[str] = []

        def latest(key: str, within_days: int = 120) -> float | None:
            if key not in self.latest or (when - self.latest[key][0]).days > within_days:
                return None
            return self.latest[key][1]

        for key in new_keys:
            self.diagnosed[key] = when
            self.last_change[key] = when
            spec = CONDITIONS[key]
            established = first and self.onset[key] == 0.0
            drugs = spec.established if established else spec.first_line
            if key == "hypertension" and "lisinopril" in self.stopped:
                drugs = ("losartan50",)
            started = []
            for drug_key in drugs:
                drug = DRUGS[drug_key]
                if drug.ingredient in self.active and not established:
                    continue
                self._prescribe(enc, when, drug_key)
                self.active_since[drug.ingredient] = when
                started.append(f"{drug.ingredient} {drug.sig}")
            plan.append(dx_line(key, established, vitals, labs, started))

        for key in list(self.diagnosed):
            if key in new_keys:
                continue
            line = self._follow_line(enc, key, when, vitals, labs, latest)
            if line:
                plan.append(line)

        # Refills: the whole list at the annual visit (medication reconciliation), some of it otherwise.
        for ingredient, drug in list(self.active.items()):
            if self.active_since.get(ingredient) == when:
                continue
            if annual or self.rng.random() < 0.3:
                self._prescribe(enc, when, drug.key)
        return plan

    def _follow_line(self, enc: EncounterDraft, key: str, when: datetime, vitals: dict[str, float],
                     labs: dict[str, float], latest: Callable[..., float | None]) -> str:
        spec = CONDITIONS[key]
        since_change = (when - self.last_change.get(key, self.start)).days
        name = spec.name
        if key == "hypertension":
            bp = f"{vitals['sbp']:.0f}/{vitals['dbp']:.0f}"
            if "lisinopril" in self.active and self.traits["ace_cough"] and (
                when - self.active_since["lisinopril"]).days >= 90:
                self._stop("lisinopril", when, "a persistent dry cough attributed to lisinopril")
                self._treatment_change(enc, when, key, "losartan50")
                return (f"{name}: BP {bp}. Persistent dry cough for several weeks, likely ACE inhibitor cough. "
                        "Discontinue lisinopril; start losartan 50 mg daily.")
            sodium = latest("sodium", 120)
            if "hydrochlorothiazide" in self.active and sodium is not None and sodium < 134:
                support = [self.latest["sodium"][2]]
                self._stop("hydrochlorothiazide", when, f"hyponatremia (sodium {sodium:.0f} mmol/L)", support)
                self.last_change[key] = when
                return (f"{name}: BP {bp}. Sodium {sodium:.0f} mmol/L, thiazide-associated hyponatremia. "
                        "Discontinue hydrochlorothiazide; recheck electrolytes in two weeks.")
            if (vitals["sbp"] >= 140 or vitals["dbp"] >= 90) and since_change >= 80:
                step = self._next_step("hypertension")
                if step is not None:
                    old, new = step
                    drug = self._treatment_change(enc, when, key, new)
                    return f"{name}: BP {bp}, above goal of 130/80. {step_phrase(drug, increase=old is not None)}."
                return f"{name}: BP {bp}, above goal on maximal tolerated regimen; reinforced low-sodium diet."
            return f"{name}: BP {bp}, at goal. Continue current regimen."
        if key == "t2dm":
            a1c = latest("a1c", 100)
            a1c_text = f"hemoglobin A1c {a1c:.1f}%" if a1c is not None else "no recent A1c"
            if a1c is not None and a1c > 7.5 and since_change >= 120:
                step = self._next_step("t2dm")
                glargine = self.active.get("insulin glargine")
                if step is None and glargine is not None and self.glargine_units < 34:
                    self.glargine_units += 4
                    self._treatment_change(enc, when, key, titrated_glargine(self.glargine_units))
                    return (f"Type 2 diabetes mellitus: {a1c_text}, above goal of 7%. Increase insulin glargine to "
                            f"{self.glargine_units} units at bedtime; review fasting glucose log.")
                if step is not None:
                    old, new = step
                    drug = self._treatment_change(enc, when, key, new)
                    return (f"Type 2 diabetes mellitus: {a1c_text}, above goal of 7%. "
                            f"{step_phrase(drug, increase=old is not None)}.")
            goal = "at goal" if a1c is not None and a1c <= 7.0 else "near goal" if a1c is not None else "due for A1c"
            return f"Type 2 diabetes mellitus: {a1c_text}, {goal}. Continue current regimen; foot care reviewed."
        if key in ONE_STEP_TITRATION:
            lab, limit, low, high, wait_days = ONE_STEP_TITRATION[key]
            value = latest(lab, 120)
            if value is None:
                return ""
            current = self.active.get(DRUGS[low].ingredient)
            stepped = value > limit and current is not None and current.key == low and since_change >= wait_days
            if stepped:
                self._treatment_change(enc, when, key, high)
            return one_step_line(key, name, value, stepped=stepped)
        if key == "ckd":
            egfr = latest("egfr", 200)
            text = f"eGFR {egfr:.0f} mL/min/1.73m2" if egfr is not None else "renal function stable"
            return f"{self._condition_code('ckd')[1]}: {text}. Avoid NSAIDs; continue blood pressure control."
        if key == "copd" and "tiotropium" not in self.active and any(
                s.problem.key == "copd_exacerbation" for s in self.stays):
            self._treatment_change(enc, when, key, "tiotropium")
            return f"{name}: recent exacerbation. Start tiotropium inhaler once daily as maintenance."
        if self.rng.random() < 0.6:
            return f"{name}: stable. Continue current management."
        return ""

    def _next_step(self, condition: str) -> tuple[str | None, str] | None:
        """The first rung of the condition's treatment ladder that applies: (product it replaces, product)."""
        for rung in TREATMENT_LADDERS[condition]:
            drug = DRUGS[rung.product]
            if rung.replaces is not None:
                if self.active.get(drug.ingredient) is DRUGS[rung.replaces]:
                    return rung.replaces, rung.product
            elif not any(name in self.active for name in (drug.ingredient, *rung.alternatives)) and \
                    drug.ingredient not in self.stopped and not self._contraindicated(drug):
                return None, rung.product
        return None

    def _contraindicated(self, drug: Drug) -> bool:
        return drug.ingredient == "empagliflozin" and self.latest.get("egfr", (None, 90.0))[1] < 30

    def _lab_visit(self, start: datetime) -> datetime:
        enc = self._open("Laboratory Visit", start)
        enc.add(start, EventKind.visit, code="Visit/LAB", name="Laboratory Visit", value="Outpatient Laboratory")
        keys = self._labs_due(start, False, ())
        if not keys:
            keys = sorted({*BMP, "a1c"} if self.rng.random() < 0.5 else {*CBC, *BMP}, key=list(MEASURES).index)
        t_draw = start + timedelta(minutes=5)
        self._procedure(enc, t_draw, *E_AND_M["venipuncture"])
        self._measure_into(enc, t_draw, keys)
        end = start + timedelta(minutes=20)
        self._close(enc, end)
        return end

    # ------------------------------------------------------------------ emergency visits and admissions

    def _pick_problem(self) -> Acute:
        weights = []
        for problem in ACUTE.values():
            weight = problem.weight
            if problem.key == "copd_exacerbation" and "copd" in self.diagnosed:
                weight = 1.5
            if problem.key == "chf_exacerbation" and "heart_failure" in self.diagnosed:
                weight = 1.5
            if problem.key == "aki" and ({"ckd", "t2dm", "heart_failure"} & set(self.diagnosed)):
                weight = 0.7
            if problem.key == "hypoglycemia" and ({"glipizide", "insulin glargine"} & set(self.active)):
                weight = 1.2
            if problem.key == "gi_bleed" and "apixaban" in self.active:
                weight = 0.8
            if problem.key == "new_afib" and self.shows("atrial_fibrillation"):
                weight = 0.0
            if problem.key == "uti" and not self.female:
                weight *= 0.3
            weights.append((problem.key, weight))
        return ACUTE[self._weighted([w for w in weights if w[1] > 0])]

    def _emergency_visit(self, start: datetime) -> datetime:
        rng = self.rng
        problem = self._pick_problem()
        doctor = rng.choice(EMERGENCY_DOCTORS)
        enc = self._open("Emergency Room Visit", start)
        enc.add(start, EventKind.visit, code="Visit/ER", name="Emergency Room Visit", value="Emergency Department")
        self.acute = (problem, 1.0)
        t_triage = start + timedelta(minutes=6)
        vitals = self._measure_into(enc, t_triage, VITALS)
        diagnosis = self._condition(enc, start + timedelta(minutes=10), problem.code, problem.name)
        t_labs = start + timedelta(minutes=30)
        lab_keys = sorted({*BMP, *CBC, *ACUTE_LABS.get(problem.key, ())}, key=list(MEASURES).index)
        labs = self._measure_into(enc, t_labs, lab_keys)
        self._procedure(enc, start + timedelta(minutes=15), *E_AND_M["ed"])
        for code, name in ACUTE_PROCEDURES.get(problem.key, ())[:1]:
            if code == "CPT4/93000":
                self._procedure(enc, start + timedelta(minutes=12), code, name)
        t_meds = start + timedelta(minutes=50)
        for drug_key in problem.ed_drugs:
            self._prescribe(enc, t_meds, drug_key, chronic=False)
        impression = ""
        if problem.imaging:
            impression = self._imaging(enc, start + timedelta(minutes=65), problem)

        admit = rng.random() < problem.admit_prob
        changes: list[str] = []
        stop = self._hypoglycemia_stop(problem, start, "an emergency visit", changes)
        t_note = start + timedelta(minutes=150)
        end = start + timedelta(minutes=rng.choice((200, 240, 270, 300)))
        if not admit:
            for drug_key in problem.discharge_drugs:
                self._prescribe(enc, t_note, drug_key, chronic=False)
            if problem.key == "new_afib":
                self._diagnose_from_stay("atrial_fibrillation", enc, t_note, changes)
        text = ed_note(self, start, problem, doctor, vitals, labs, impression, admit, changes)
        note = self._note(enc, t_note, "ed", text)
        if stop is not None:
            stop.note = note
        self._close(enc, end)
        self.acute = None
        if admit:
            return self._admission(end, problem, from_ed=(start, labs, impression))
        summary = ed_visit_summary(start, problem, labs, impression, changes)
        self.stays.append(Stay("emergency", start, end, problem, summary, diagnosis, note))
        return end

    def _hypoglycemia_stop(self, problem: Acute, when: datetime, setting: str, changes: list[str]) -> Stop | None:
        """Glipizide is stopped when it caused a hypoglycemia that needed `setting`; the visit's note says so."""
        if problem.key != "hypoglycemia" or "glipizide" not in self.active:
            return None
        changes.append("Glipizide discontinued because of hypoglycemia.")
        return self._stop("glipizide", when, f"hypoglycemia requiring {setting}", [self.latest["glucose"][2]])

    def _diagnose_from_stay(self, key: str, enc: EncounterDraft, when: datetime, changes: list[str]) -> None:
        if key in self.diagnosed:
            return
        self.onset.setdefault(key, self.progress)
        self.diagnosed[key] = when
        self.last_change[key] = when
        spec = CONDITIONS[key]
        self._condition(enc, when, spec.code, spec.name)
        started = []
        for drug_key in spec.first_line:
            if DRUGS[drug_key].ingredient not in self.active:
                self._prescribe(enc, when, drug_key)
                started.append(DRUGS[drug_key].ingredient)
        if started:
            changes.append(f"New {spec.label}: started {join_words(started)}.")

    def _imaging(self, enc: EncounterDraft, when: datetime, problem: Acute) -> str:
        study = IMAGING[problem.imaging]  # type: ignore[index]
        self._procedure(enc, when, study.code, study.name)
        impression = problem.finding or study.normal
        report = radiology_report(self, study, problem, when, impression)
        self._note(enc, when + timedelta(minutes=40), "radiology", report)
        return impression

    def _admission(self, start: datetime, problem: Acute,
                   from_ed: tuple[datetime, dict[str, float], str] | None) -> datetime:
        rng = self.rng
        hospitalist = rng.choice(HOSPITALISTS)
        stay_days = rng.randint(*problem.stay_days)
        enc = self._open("Inpatient Visit", start)
        enc.add(start, EventKind.visit, code="Visit/IP", name="Inpatient Visit",
                value="Orthopedic Surgery Ward" if problem.key == "knee_replacement" else "General Medicine Ward")
        t0 = start + timedelta(minutes=30)
        diagnosis = self._condition(enc, t0, problem.code, problem.name)
        for key in self.diagnosed:
            if CONDITIONS[key].code != problem.code:
                self._condition(enc, t0, *self._condition_code(key))
        self._procedure(enc, t0, *E_AND_M["admit"])
        self.acute = (problem, 1.0)
        admit_vitals = self._measure_into(enc, start + timedelta(minutes=20), VITALS)
        first_labs: dict[str, float] = from_ed[1] if from_ed else {}
        impression = from_ed[2] if from_ed else ""
        if not from_ed:
            first_labs = self._measure_into(enc, start + timedelta(minutes=40), [*BMP, *CBC])
        t_orders = start + timedelta(minutes=75)
        for drug_key in problem.ward_drugs:
            self._prescribe(enc, t_orders, drug_key, chronic=False)
        if problem.key not in ("gi_bleed", "knee_replacement"):
            self._prescribe(enc, t_orders, "heparin", chronic=False)
        held: list[str] = []
        for ingredient, drug in self.active.items():
            if problem.key == "aki" and ingredient in ("lisinopril", "losartan", "metformin", "hydrochlorothiazide",
                                                       "furosemide", "empagliflozin"):
                held.append(ingredient)
                continue
            if problem.key == "gi_bleed" and ingredient == "apixaban":
                held.append(ingredient)
                continue
            enc.add(t_orders, EventKind.drug, code=drug.code, name=drug.name, value=drug.sig)
        procedures_done: list[str] = []
        for code, name in ACUTE_PROCEDURES.get(problem.key, ()):
            if code == "CPT4/93000" and from_ed:
                continue
            self._procedure(enc, start + timedelta(hours=3), code, name)
            procedures_done.append(name.split(";")[0].split(",")[0].lower())
        if problem.key == "knee_replacement":
            impression = self._imaging(enc, start + timedelta(hours=6), problem)
            self._note(enc, start + timedelta(hours=4), "procedure", knee_arthroplasty_note(start))
        elif problem.key == "gi_bleed":
            self._note(enc, start + timedelta(hours=5), "procedure", endoscopy_note(start))
        elif problem.key == "chf_exacerbation" and rng.random() < 0.6:
            echo = IMAGING["echo"]
            self._procedure(enc, start + timedelta(hours=20), echo.code, echo.name)
            self._note(enc, start + timedelta(hours=21), "radiology", echo_report(start + timedelta(hours=20)))
        hp = hp_note(self, start, problem, hospitalist, admit_vitals, first_labs, impression, held)
        self._note(enc, start + timedelta(minutes=90), "hp", hp)

        peak: dict[str, float] = dict(first_labs)
        trough: dict[str, float] = dict(first_labs)
        last_labs = first_labs
        discharge_day = (start + timedelta(days=stay_days)).date()
        for day_index in range(1, stay_days + 1):
            day = (start + timedelta(days=day_index)).date()
            severity = max(0.05, 1.0 - day_index / (stay_days + 0.5))
            self.acute = (problem, severity)
            last_labs = self._measure_into(enc, clock(day, 5, 30), [*BMP, *CBC])
            for key, value in last_labs.items():
                peak[key] = max(peak.get(key, value), value)
                trough[key] = min(trough.get(key, value), value)
            vitals_times = ((8, 0),) if day == discharge_day else ((0, 0), (8, 0), (16, 0))
            for hour, minute in vitals_times:
                self._measure_into(enc, clock(day, hour, minute), VITALS)
            if day != discharge_day:
                self._procedure(enc, clock(day, 9, 45), *E_AND_M["daily"])
                self._note(enc, clock(day, 10, 15), "inpatient_progress",
                           ward_note(self, day, day_index, problem, hospitalist, last_labs, severity))
        end = clock(discharge_day, rng.randint(11, 15), rng.choice((0, 20, 40)))
        changes: list[str] = []
        for drug_key in problem.discharge_drugs:
            self._prescribe(enc, end - timedelta(minutes=30), drug_key, chronic=False)
        if problem.key == "new_afib":
            self._diagnose_from_stay("atrial_fibrillation", enc, end - timedelta(minutes=30), changes)
        stop = self._hypoglycemia_stop(problem, start, "hospital admission", changes)
        if problem.key == "gi_bleed":
            self.bleed_at = end
        self._procedure(enc, end - timedelta(minutes=20), *E_AND_M["discharge"])
        summary_text = discharge_summary(self, start, end, problem, hospitalist, last_labs, peak, trough, impression,
                                         held, procedures_done, changes)
        note = self._note(enc, end - timedelta(minutes=10), "discharge", summary_text)
        if stop is not None:
            stop.note = note
        self.acute = None
        self._close(enc, end)
        answer = admission_summary(start, end, stay_days, problem, from_ed=from_ed is not None, impression=impression,
                                   peak=peak, trough=trough, last=last_labs, held=held, changes=changes)
        self.stays.append(Stay("admission", start, end, problem, answer, diagnosis, note))
        return end

