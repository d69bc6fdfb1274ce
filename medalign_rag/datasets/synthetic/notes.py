"""Note prose and clinicians' summaries: what the record's free text says about the simulated care.

Every writer here reads the patient's state and the values the simulator measured; the only randomness is the
wording, drawn from the patient's random stream at the same point the simulation asks for the note.
`CopyForward` makes a share of notes repeat a large span of the patient's previous note of the same kind, as
real notes do.
"""

from __future__ import annotations

import random
from datetime import date, datetime
from typing import Sequence

from medalign_rag.datasets.synthetic.state import EventDraft, PatientState
from medalign_rag.datasets.synthetic.vocabulary import (
    CONDITIONS,
    DRUGS,
    IMAGING,
    MEASURES,
    RADIOLOGISTS,
    Acute,
    Drug,
    Imaging,
)


def iso_day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


def join_words(words: Sequence[str]) -> str:
    words = list(words)
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


# ------------------------------------------------------------------------------------------------ office visits


def dx_line(key: str, established: bool, vitals: dict[str, float], labs: dict[str, float],
            started: list[str]) -> str:
    spec = CONDITIONS[key]
    med = f" Continue {join_words(started)}." if established and started else (
        f" Start {join_words(started)}." if started else "")
    bp = f"{vitals['sbp']:.0f}/{vitals['dbp']:.0f}"
    if established:
        return f"{spec.name} ({spec.code.split('/')[1]}), long-standing, diagnosed before establishing care " \
               f"here.{med}"
    evidence = {
        "hypertension": f"BP {bp} today and elevated on prior readings",
        "t2dm": f"hemoglobin A1c {labs.get('a1c', 0):.1f}%",
        "hyperlipidemia": f"LDL cholesterol {labs.get('ldl', 0):.0f} mg/dL",
        "ckd": f"eGFR {labs.get('egfr', 0):.0f} mL/min/1.73m2 with creatinine {labs.get('creatinine', 0):.2f} "
               "mg/dL, reduced for more than three months",
        "hypothyroidism": f"TSH {labs.get('tsh', 0):.2f} mIU/L with fatigue and cold intolerance",
        "copd": "spirometry today shows fixed airflow obstruction (FEV1/FVC 0.62) in a former smoker",
        "heart_failure": "echocardiogram shows reduced ejection fraction (LVEF 35%)",
        "atrial_fibrillation": "ECG today shows atrial fibrillation",
        "depression": "PHQ-9 score 14",
        "gerd": "typical symptoms responding to antacids",
        "osteoarthritis": "exam with crepitus and X-ray with joint space narrowing",
        "obesity": f"BMI {vitals.get('bmi', 0):.1f} kg/m2",
    }[key]
    extra = {
        "t2dm": " Diabetes education and nutrition referral; annual retinal screening.",
        "ckd": " Avoid NSAIDs, dose medications for kidney function, nephrology referral if eGFR falls below 45.",
        "obesity": " Counseled on diet and exercise; goal 5-10% weight loss.",
        "hypertension": " Low-sodium diet and home blood pressure log.",
    }.get(key, "")
    return f"New diagnosis of {spec.label} ({spec.code.split('/')[1]}): {evidence}.{med}{extra}"


def step_phrase(drug: Drug, *, increase: bool) -> str:
    """A plan's words for a treatment step: a higher dose of a drug already taken, or a drug added."""
    return f"Increase {drug.ingredient} to {drug.sig}" if increase else f"Add {drug.ingredient} {drug.sig}"


def one_step_line(key: str, name: str, value: float, *, stepped: bool) -> str:
    """The plan line for a condition treated with one dose step (`simulator.ONE_STEP_TITRATION`)."""
    if key == "hyperlipidemia":
        reading = f"{name}: LDL {value:.0f} mg/dL"
        return f"{reading}, above goal. Increase atorvastatin to 40 mg at bedtime." if stepped else \
            f"{reading}. Continue atorvastatin."
    reading = f"{name}: TSH {value:.2f} mIU/L"
    return f"{reading}, still above range. Increase levothyroxine to 75 mcg daily." if stepped else \
        f"{reading}, clinically euthyroid. Continue levothyroxine."


def med_list(patient: PatientState) -> str:
    if not patient.active:
        return "- None"
    return "\n".join(f"- {drug.name}: {drug.sig}" for drug in patient.active.values())


def problem_phrase(patient: PatientState) -> str:
    labels = [CONDITIONS[key].label for key in patient.diagnosed]
    return join_words(labels) if labels else "no chronic medical problems"


def results_text(labs: dict[str, float], previous: dict[str, tuple[datetime, float]]) -> list[str]:
    lines = []
    for key, value in labs.items():
        spec = MEASURES[key]
        label = spec.label if spec.label[:2] == "eG" else spec.label[0].upper() + spec.label[1:]
        text = f"{label}: {spec.say(value)}"
        if key in previous and key in ("a1c", "creatinine", "ldl", "tsh", "hemoglobin", "egfr", "uacr"):
            then, old = previous[key]
            text += f" (previous {spec.say(old)} on {iso_day(then)})"
        lines.append(text)
    return lines


def office_note(patient: PatientState, start: datetime, reason: str, vitals: dict[str, float],
                labs: dict[str, float], previous: dict[str, tuple[datetime, float]], plan: list[str], *,
                first: bool, annual: bool) -> str:
    rng = patient.rng
    woman = "woman" if patient.female else "man"
    she = "She" if patient.female else "He"
    her = "her" if patient.female else "his"
    hpi = [f"{patient.age(start)}-year-old {woman} with {problem_phrase(patient)} who presents for {reason}."]
    hpi.append(rng.choice((
        f"{she} reports feeling generally well and denies chest pain, dyspnea or palpitations.",
        f"{she} has had more fatigue lately but no chest pain, fevers or weight loss.",
        f"{she} has been walking 20-30 minutes most days and is trying to limit salt and sweets.",
        f"{she} notes occasional headaches, no visual changes, no focal weakness.",
        f"{she} reports good energy, stable appetite and sleeping about seven hours a night.",
    )))
    if patient.active:
        hpi.append(rng.choice((
            f"{she} takes {her} medications as prescribed and reports no side effects.",
            f"{she} occasionally misses evening doses; uses a pill organizer.",
            f"Medication adherence is good per {her} pharmacy fill history.",
        )))
    lines = [
        f"PROGRESS NOTE - {patient.clinic}",
        f"Date of service: {iso_day(start)}",
        f"Provider: {patient.pcp}",
        f"Visit type: {'New patient' if first else 'Annual physical' if annual else 'Return visit'}",
        "",
        "HISTORY OF PRESENT ILLNESS:",
        " ".join(hpi),
        "",
    ]
    if annual:
        lines += [
            "REVIEW OF SYSTEMS:",
            "Constitutional: no fever, chills or night sweats. Cardiovascular: no chest pain or orthopnea. "
            "Respiratory: no hemoptysis. GI: no melena or hematochezia. GU: no hematuria. "
            "Neuro: no syncope or focal weakness. Psych: mood stable.",
            "",
            "SOCIAL HISTORY: " + rng.choice((
                "Former smoker, quit 12 years ago. Drinks 1-2 glasses of wine per week. Lives with spouse.",
                "Never smoker. No alcohol. Lives alone, independent in daily activities.",
                "Never smoker. Occasional alcohol. Works part-time as a bookkeeper.",
            )),
            "",
        ]
    lines += ["CURRENT MEDICATIONS:", med_list(patient), ""]
    lines += [
        "VITAL SIGNS:",
        f"BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f} mmHg, HR {vitals['hr']:.0f}/min, RR {vitals['rr']:.0f}/min, "
        f"Temp {vitals['temp']:.1f} C, SpO2 {vitals['spo2']:.0f}% on room air, weight {vitals['weight']:.1f} kg, "
        f"BMI {vitals['bmi']:.1f} kg/m2.",
        "",
        "PHYSICAL EXAM:",
        rng.choice((
            "General: well-appearing, no distress. Heart: regular rate and rhythm, no murmur. Lungs: clear "
            "bilaterally. Abdomen: soft, non-tender. Extremities: no edema.",
            "General: alert, oriented, comfortable. CV: normal S1 S2, no gallop. Resp: no wheezes or crackles. "
            "Ext: trace ankle edema bilaterally. Skin: no rashes.",
            "Well-nourished adult in no acute distress. Neck supple, no thyromegaly. Lungs clear. Heart regular. "
            "Feet: intact monofilament sensation, pulses 2+.",
        )),
        "",
    ]
    if labs:
        lines += ["RESULTS (drawn today):", *results_text(labs, previous), ""]
    lines += ["ASSESSMENT AND PLAN:"]
    lines += [f"{number}. {line}" for number, line in enumerate(plan, start=1)] or ["1. Routine follow-up."]
    lines += ["", f"Return to clinic in {rng.choice((3, 4, 6))} months, sooner if needed.", f"{patient.pcp}"]
    return "\n".join(lines)


def office_summary(start: datetime, reason: str, vitals: dict[str, float], labs: dict[str, float],
                   plan: list[str]) -> str:
    parts = [f"Office visit on {iso_day(start)} for {reason}.",
             f"BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f} mmHg, weight {vitals['weight']:.1f} kg."]
    key_labs = [f"{MEASURES[k].label} {MEASURES[k].say(v)}" for k, v in labs.items()
                if k in ("a1c", "creatinine", "ldl", "tsh", "hemoglobin", "sodium")]
    if key_labs:
        parts.append("Labs: " + ", ".join(key_labs) + ".")
    if plan:
        parts.append("Plan: " + " ".join(plan))
    return " ".join(parts)


# ------------------------------------------------------------------------------------- emergency visits and stays


def labs_phrase(labs: dict[str, float], problem: Acute) -> str:
    focus = {
        "pneumonia": ("wbc",), "copd_exacerbation": ("wbc",), "chf_exacerbation": ("bnp", "creatinine"),
        "aki": ("creatinine", "potassium"), "uti": ("wbc",), "cellulitis": ("wbc",),
        "chest_pain": ("troponin",), "syncope": ("troponin", "hemoglobin"), "hypoglycemia": ("glucose",),
        "gi_bleed": ("hemoglobin", "bun"), "ankle_sprain": (), "new_afib": ("tsh", "troponin"),
        "knee_replacement": ("hemoglobin",),
    }[problem.key]
    parts = [f"{MEASURES[k].label} {MEASURES[k].say(labs[k])}" for k in focus if k in labs]
    return ("Key results: " + ", ".join(parts) + ".") if parts else ""


def ed_visit_summary(start: datetime, problem: Acute, labs: dict[str, float], impression: str,
                     changes: list[str]) -> str:
    """What a clinician's summary of an emergency visit that ended with discharge home says."""
    treated = join_words([DRUGS[d].ingredient for d in problem.ed_drugs]) or "supportive care"
    return (f"Emergency department visit on {iso_day(start)} for {problem.complaint}; diagnosed with "
            f"{problem.label}. {labs_phrase(labs, problem)}"
            + (f" Imaging: {impression}" if impression else "")
            + f" Treated with {treated}"
            + " and discharged home"
            + (f" on {join_words([DRUGS[d].ingredient for d in problem.discharge_drugs])}."
               if problem.discharge_drugs else ".")
            + (" " + " ".join(changes) if changes else ""))


def admission_summary(start: datetime, end: datetime, stay_days: int, problem: Acute, *, from_ed: bool,
                      impression: str, peak: dict[str, float], trough: dict[str, float], last: dict[str, float],
                      held: list[str], changes: list[str]) -> str:
    """What a clinician's summary of an admission says."""
    discharge_meds = [DRUGS[d].ingredient for d in problem.discharge_drugs]
    days = f"{stay_days} day{'s' if stay_days != 1 else ''}"
    parts = [
        f"Admitted {iso_day(start)} to {iso_day(end)} ({days}) for {problem.label}"
        + (f" after presenting with {problem.complaint}." if from_ed else "."),
        f"Hospital course: {problem.course}." if problem.course else "",
        f"Imaging: {impression}" if impression and problem.finding else "",
        course_numbers(problem, peak, trough, last),
        f"Held during the stay: {join_words(held)}." if held else "",
        *changes,
        "Discharged home" + (f" on {join_words(discharge_meds)}." if discharge_meds else "."),
    ]
    return " ".join(part for part in parts if part)


def radiology_report(patient: PatientState, study: Imaging, problem: Acute, when: datetime, impression: str) -> str:
    return "\n".join([
        f"RADIOLOGY REPORT: {study.title}",
        f"Exam date: {iso_day(when)}",
        f"Indication: {problem.complaint}.",
        f"Technique: {study.technique}",
        "Comparison: " + ("prior studies in the record" if len(patient.stays) else "none available"),
        f"Findings: {impression}",
        f"IMPRESSION: {impression}",
        f"Electronically signed by {patient.rng.choice(RADIOLOGISTS)}",
    ])


def knee_arthroplasty_note(start: datetime) -> str:
    return (f"OPERATIVE NOTE\nDate: {iso_day(start)}\nProcedure: right total knee arthroplasty.\n"
            "Anesthesia: spinal with adductor canal block. Estimated blood loss: 200 mL.\n"
            "Findings: tricompartmental osteoarthritis, worst in the medial compartment.\n"
            "Implants: cemented posterior-stabilized components. No complications.")


def endoscopy_note(start: datetime) -> str:
    return (f"PROCEDURE NOTE: ESOPHAGOGASTRODUODENOSCOPY\nDate: {iso_day(start)}\nIndication: melena and anemia.\n"
            "Findings: 8 mm clean-based duodenal bulb ulcer without visible vessel. Biopsies taken for "
            "H. pylori.\nPlan: high-dose proton pump inhibitor, avoid NSAIDs.")


def echo_report(when: datetime) -> str:
    return (f"RADIOLOGY REPORT: {IMAGING['echo'].title}\nExam date: {iso_day(when)}\n"
            "Findings: dilated left ventricle with global hypokinesis, LVEF 30-35%. Moderate mitral "
            "regurgitation. Estimated RVSP 45 mmHg.\nIMPRESSION: reduced systolic function, unchanged "
            "from prior.")


def ed_note(patient: PatientState, start: datetime, problem: Acute, doctor: str, vitals: dict[str, float],
            labs: dict[str, float], impression: str, admit: bool, changes: list[str]) -> str:
    woman = "woman" if patient.female else "man"
    she = "She" if patient.female else "He"
    lines = [
        "EMERGENCY DEPARTMENT PROVIDER NOTE",
        f"Arrival: {start.strftime('%Y-%m-%d %H:%M')}    Provider: {doctor}",
        "",
        f"CHIEF COMPLAINT: {problem.complaint}",
        "",
        "HISTORY OF PRESENT ILLNESS:",
        f"{patient.age(start)}-year-old {woman} with {problem_phrase(patient)} presenting with {problem.complaint}. "
        + patient.rng.choice((
            f"{she} denies recent travel or sick contacts.",
            f"{she} tried over-the-counter remedies without relief.",
            f"Symptoms began gradually and worsened today, prompting the visit.",
        )),
        "",
        "HOME MEDICATIONS:",
        med_list(patient),
        "",
        "TRIAGE VITALS: "
        f"BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f}, HR {vitals['hr']:.0f}, RR {vitals['rr']:.0f}, "
        f"Temp {vitals['temp']:.1f} C, SpO2 {vitals['spo2']:.0f}%.",
        "",
        "RESULTS: " + "; ".join(f"{MEASURES[k].label} {MEASURES[k].say(v)}" for k, v in labs.items()) + ".",
    ]
    if impression:
        lines.append(f"IMAGING: {impression}")
    treatments = join_words([f"{DRUGS[d].ingredient} {DRUGS[d].sig}" for d in problem.ed_drugs])
    lines += [
        "",
        "ED COURSE AND MEDICAL DECISION MAKING:",
        " ".join([f"Presentation consistent with {problem.label}.",
                  f"Given {treatments}." if treatments else "Supportive care.", *changes]),
        "",
        f"DIAGNOSIS: {problem.name} ({problem.code.split('/')[1]})",
        "DISPOSITION: " + ("Admitted to the medicine service." if admit else
                           "Discharged home with return precautions and primary care follow-up in one week."),
    ]
    return "\n".join(lines)


def course_numbers(problem: Acute, peak: dict[str, float], trough: dict[str, float], last: dict[str, float]) -> str:
    """The one lab trend that tells this problem's course (peak or nadir, and the value at discharge)."""
    def say(key: str, value: float) -> str:
        return MEASURES[key].say(value)

    if problem.key in ("pneumonia", "uti", "cellulitis", "copd_exacerbation") and "wbc" in peak:
        return f"WBC peaked at {say('wbc', peak['wbc'])} and was {say('wbc', last['wbc'])} at discharge."
    if problem.key in ("aki", "chf_exacerbation") and "creatinine" in peak:
        return (f"Creatinine peaked at {say('creatinine', peak['creatinine'])} and was "
                f"{say('creatinine', last['creatinine'])} at discharge.")
    if problem.key in ("gi_bleed", "knee_replacement") and "hemoglobin" in trough:
        return (f"Hemoglobin nadir {say('hemoglobin', trough['hemoglobin'])}, "
                f"{say('hemoglobin', last['hemoglobin'])} at discharge.")
    return ""


def hp_note(patient: PatientState, start: datetime, problem: Acute, doctor: str, vitals: dict[str, float],
            labs: dict[str, float], impression: str, held: list[str]) -> str:
    woman = "woman" if patient.female else "man"
    lines = [
        "HISTORY AND PHYSICAL - ADMISSION",
        f"Admission date: {iso_day(start)}    Attending: {doctor}",
        "",
        f"CHIEF COMPLAINT: {problem.complaint}",
        "",
        "HISTORY OF PRESENT ILLNESS:",
        f"{patient.age(start)}-year-old {woman} with {problem_phrase(patient)} admitted for {problem.label}. "
        + patient.rng.choice((
            "Symptoms progressed over several days despite outpatient measures.",
            "The patient was seen in the emergency department and could not be safely discharged.",
            "Family reports declining oral intake and reduced activity over the past week.",
        )),
        "",
        "PAST MEDICAL HISTORY: " + (", ".join(CONDITIONS[k].name for k in patient.diagnosed) or "none"),
        "",
        "HOME MEDICATIONS:",
        med_list(patient),
        "",
        f"ADMISSION VITALS: BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f}, HR {vitals['hr']:.0f}, "
        f"RR {vitals['rr']:.0f}, Temp {vitals['temp']:.1f} C, SpO2 {vitals['spo2']:.0f}%.",
    ]
    if labs:
        lines.append("ADMISSION LABS: " + "; ".join(f"{MEASURES[k].label} {MEASURES[k].say(v)}"
                                                   for k, v in labs.items()) + ".")
    if impression:
        lines.append(f"IMAGING: {impression}")
    lines += [
        "",
        "ASSESSMENT AND PLAN:",
        f"1. {problem.name}: " + (join_words([f"{DRUGS[d].ingredient} {DRUGS[d].sig}" for d in problem.ward_drugs])
                                   or "supportive care, monitoring") + ".",
    ]
    if held:
        lines.append(f"2. Holding {join_words(held)} for now.")
    lines.append("DVT prophylaxis, code status full code, dispo pending clinical improvement.")
    return "\n".join(lines)


def ward_note(patient: PatientState, day: date, day_index: int, problem: Acute, doctor: str,
              labs: dict[str, float], severity: float) -> str:
    trend = "improving" if severity < 0.7 else "slowly improving"
    key_labs = "; ".join(f"{MEASURES[k].label} {MEASURES[k].say(v)}" for k, v in labs.items()
                         if k in ("creatinine", "potassium", "sodium", "wbc", "hemoglobin", "glucose"))
    return "\n".join([
        f"HOSPITAL PROGRESS NOTE - hospital day {day_index + 1}",
        f"Date: {day.isoformat()}    Attending: {doctor}",
        "Subjective: " + patient.rng.choice((
            "Slept well overnight.", "Some fatigue, appetite improving.", "No new complaints overnight.",
            "Ambulated in the hallway with nursing.",
        )),
        f"Labs this morning: {key_labs}.",
        f"Assessment: {problem.label}, {trend}.",
        f"Plan: continue {join_words([DRUGS[d].ingredient for d in problem.ward_drugs]) or 'current management'}; "
        "monitor labs and vitals; discharge planning.",
    ])


def discharge_summary(patient: PatientState, start: datetime, end: datetime, problem: Acute, doctor: str,
                      last: dict[str, float], peak: dict[str, float], trough: dict[str, float], impression: str,
                      held: list[str], procedures: list[str], changes: list[str]) -> str:
    secondary = [CONDITIONS[k].name for k in patient.diagnosed if CONDITIONS[k].code != problem.code]
    discharge_meds = [f"- {DRUGS[d].name}: {DRUGS[d].sig} (new)" for d in problem.discharge_drugs]
    discharge_meds += [f"- {drug.name}: {drug.sig}" for drug in patient.active.values()]
    lines = [
        "DISCHARGE SUMMARY",
        f"Admission date: {iso_day(start)}",
        f"Discharge date: {iso_day(end)}",
        f"Attending: {doctor}",
        "",
        f"PRINCIPAL DIAGNOSIS: {problem.name} ({problem.code.split('/')[1]})",
        "SECONDARY DIAGNOSES: " + ("; ".join(secondary) if secondary else "none"),
        "",
        "HOSPITAL COURSE:",
        f"The patient was admitted with {problem.complaint} and found to have {problem.label}. "
        + (f"The patient was {problem.course}. " if problem.course else "")
        + " ".join(part for part in [
            course_numbers(problem, peak, trough, last),
            f"{join_words(held).capitalize()} held during the stay and resumed at discharge." if held else "",
            *changes,
        ] if part),
    ]
    if procedures:
        lines.append("PROCEDURES: " + "; ".join(procedures) + ".")
    if impression:
        lines.append(f"IMAGING: {impression}")
    lines += [
        "",
        "DISCHARGE LABS: " + "; ".join(f"{MEASURES[k].label} {MEASURES[k].say(v)}" for k, v in last.items()
                                       if k in ("creatinine", "potassium", "sodium", "wbc", "hemoglobin")) + ".",
        "",
        "DISCHARGE MEDICATIONS:",
        *(discharge_meds or ["- None"]),
        "",
        "DISPOSITION: home. Follow up with primary care within 7 days.",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ copy-forward


def _header_length(lines: Sequence[str]) -> int:
    """Lines of a note's header (title, date, author): up to its first blank line, else title and date line."""
    return lines.index("") + 1 if "" in lines else 2


class CopyForward:
    """Copied-forward notes: real notes repeat large spans of the patient's earlier notes.

    With probability `share`, a note opens (after its own header of title and date) with a contiguous span of 60-90%
    of the body of the patient's previous note of the same kind (office progress note, ward note, discharge summary,
    ...), then goes on with its own new text; the first note of each kind has nothing to copy. Spans are taken from
    the previous note's own new text, never from text it copied itself, so every copied span has exactly one source:
    the earlier note that first wrote it, which is the one instructions cite as evidence.

    The decisions come from their own random stream, so the patient's stream is not shifted; the record still
    differs from the one without copies after the first copy, because copied text counts toward the record's target
    length (fewer encounters fit).
    """

    def __init__(self, rng: random.Random, share: float) -> None:
        self.rng = rng
        self.share = share
        self._previous: dict[str, tuple[list[str], EventDraft]] = {}  # note kind -> (its new body, its draft)

    def copy_into(self, kind: str, text: str) -> tuple[str, EventDraft | None]:
        """`text` with a copied span spliced in after its header, and the note the span came from (or None)."""
        previous = self._previous.get(kind)
        if previous is None or self.rng.random() >= self.share:
            return text, None
        body, source = previous
        size = max(1, round(len(body) * self.rng.uniform(0.6, 0.9)))
        offset = self.rng.randint(0, len(body) - size)
        lines = text.split("\n")
        header = _header_length(lines)
        copied = [*lines[:header], *body[offset:offset + size], "", *lines[header:]]
        return "\n".join(copied), source

    def remember(self, kind: str, text: str, note: EventDraft) -> None:
        """Record `note`'s own new text (before any copy was spliced in) as the source for the next copy."""
        lines = text.split("\n")
        body = lines[_header_length(lines):]
        if any(line.strip() for line in body):
            self._previous[kind] = (body, note)
