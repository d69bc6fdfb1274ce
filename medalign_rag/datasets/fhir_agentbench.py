"""FHIR-AgentBench questions over the MIMIC-IV demo -> MedAlign-style instructions with gold evidence events.

FHIR-AgentBench (Lee et al. 2025) asks questions of MIMIC-IV-on-FHIR; its gold evidence (`true_fhir_ids`) names
FHIR resources. MIMIC-IV-on-FHIR derives every resource id from its source row as a name-based UUID,
`uuid5(uuid5(uuid5(NAMESPACE_OID, "MIMIC-IV"), NS), key)` (see docs/formats.md section 5), so recomputing those
ids for the rows `mimic_iv_demo` converts maps gold evidence onto our event ids.

What maps where (each gold id becomes one *evidence group*: a set of events of which any one, in the context,
covers that id; `Instruction.evidence_event_ids` is the union of the groups, and the groups are kept in
`metadata["evidence_groups"]`):
  Condition / Procedure / MedicationRequest / Observation (labs, ICU charts, outputs, microbiology) -> the event
  made from that row.
  Patient -> the patient's "Patient demographics" event (gender, age at the anchor year).
  Medication (a drug concept shared by all patients, or a mix of several) -> the patient's prescription rows of
  that drug (or that mix) up to the question's time anchor.
  Location (a care unit, shared by all patients) -> the patient's transfers into that unit up to the anchor.

Encounter rule. A FHIR Encounter is a whole stay: its period (admission and discharge times), its class and
admission type, where the patient came from and went to. In a record, that is what the encounter's header
(`<encounter start_timestamp=... end_timestamp=...>`) and its opening and closing events say: the admission
event (`adm-<hadm_id>`: time, admission type and location) and the discharge event (`dis-<hadm_id>`: time,
discharge location or death, length of stay); for ICU stays `icu-<stay_id>` and `icu-out-<stay_id>`. Either
event brings the header with both dates into the context, so an Encounter id is covered when *either* is in the
context. Any other event of the stay would bring the header too, but not the admission type or discharge
location a reader may need, so they do not count.
The legacy rule (before this change) mapped an Encounter to its opening event only, the oldest event of the stay
and the first one truncation cuts; `metadata["evidence_groups_legacy"]` keeps the groups under that rule (all
else equal), so reports can show coverage both ways.
"""

from __future__ import annotations

import ast
import csv
import json
import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterable

from medalign_rag.atomic import atomic_write_text
from medalign_rag.datasets.mimic_iv_demo import (
    MEDICATION_KEY_SEPARATOR,
    MEDICATION_NAMESPACE,
    ConversionSummary,
    MimicEvents,
    copy_dictionaries,
    load_with_progress,
    read_demo_table,
    write_mimic_records,
)
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Instruction

__all__ = [
    "MIMIC_FHIR_NAMESPACE",
    "TASK_COLUMNS",
    "EvidenceResolution",
    "FhirIdIndex",
    "TypeResolution",
    "build_fhir_id_index",
    "category_from_template",
    "convert_fhir_agentbench",
    "fhir_resource_id",
    "parse_time_anchor",
    "read_tasks",
]

MIMIC_FHIR_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "MIMIC-IV")
TASK_COLUMNS = (
    "question_id", "question", "assumption", "patient_fhir_id", "true_answer", "true_fhir_ids", "task_type",
    "expected_actions", "template",
)
# Namespaces whose one id stands for a value shared by many rows (a care unit's name): resolved per patient and
# only up to the question's time anchor, since a later stay in that unit cannot be evidence.
_SHARED_NAMESPACES = frozenset({"Location", MEDICATION_NAMESPACE})
# Written into evidence_resolution.json beside the counts, so the file says what "resolved" means.
EVIDENCE_RULES = {
    "Encounter": "admission or discharge event of the stay (adm-/dis-, icu-/icu-out-); either covers it",
    "Encounter (legacy)": "admission event only (adm-, icu-)",
    "Patient": "the patient's 'Patient demographics' event (gender, age at the anchor year)",
    "Medication": "the patient's prescriptions of that drug or mix up to the question's time anchor; any covers it",
    "Location": "the patient's transfers into that care unit up to the question's time anchor; any covers it",
}
_ANCHOR = re.compile(r"current time is (\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2})?)", re.IGNORECASE)


def fhir_resource_id(namespace: str, key: str) -> str:
    """The MIMIC-IV-on-FHIR resource id of the row with `key` in namespace `namespace` (e.g. "Condition")."""
    return str(uuid.uuid5(uuid.uuid5(MIMIC_FHIR_NAMESPACE, namespace), key))


def parse_time_anchor(assumption: str | None) -> datetime | None:
    """The "current time" an `assumption` fixes ("Assume the current time is 2133-12-31 23:59:00."), if any."""
    match = _ANCHOR.search(assumption or "")
    return datetime.fromisoformat(match.group(1)) if match else None


# Checked in order: the first keyword found in the template names the category.
_CATEGORY_KEYWORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("microbiology", ("microbiology", "organism", "specimen")),
    ("output", ("output",)),
    ("lab", ("{lab_name}", "lab test", "lab value")),
    ("vital", ("{vital_name}", "weight", "height")),
    ("medication", ("prescri", "drug", "medication")),
    ("procedure", ("procedure",)),
    ("diagnosis", ("diagnos",)),
    ("icu_stay", ("icu ",)),
    ("careunit", ("careunit",)),
    ("admission", ("hospital", "admitted", "emergency room", "admission")),
    ("demographics", ("gender", "marital", " age ")),
)


def category_from_template(template: str | None) -> str:
    """A short label for a FHIR-AgentBench question template ("lab", "medication", "vital", ...)."""
    text = f" {(template or '').lower()} "
    for label, keywords in _CATEGORY_KEYWORDS:
        if any(keyword.lower() in text for keyword in keywords):
            return label
    return "other"


# --------------------------------------------------------------------------------------------- id index


@dataclass(frozen=True)
class _Target:
    subject_id: str
    event_id: str
    timestamp: datetime
    closing: bool  # the event that ends an encounter: evidence under the Encounter rule, not the legacy one


@dataclass
class FhirIdIndex:
    """FHIR resource ids of converted rows -> our event ids, and Patient ids -> subject ids."""

    subject_by_patient_id: dict[str, str]
    # fhir id -> the events it stands for; most ids have one, Encounters two, Location and Medication ids many.
    events_by_fhir_id: dict[str, list[_Target]]
    namespace_by_fhir_id: dict[str, str]

    def resolve(
        self, fhir_id: str, subject_id: str, time_anchor: datetime | None = None, *, legacy: bool = False
    ) -> list[str]:
        """Our event ids for `fhir_id` in `subject_id`'s record (empty when it maps to no event).

        Any one of them covers the id. `legacy` applies the old Encounter rule (the opening event only).
        """
        shared = self.namespace_by_fhir_id.get(fhir_id) in _SHARED_NAMESPACES
        return [
            target.event_id
            for target in self.events_by_fhir_id.get(fhir_id, ())
            if target.subject_id == subject_id
            and not (legacy and target.closing)
            and not (shared and time_anchor is not None and target.timestamp > time_anchor)
        ]


def build_fhir_id_index(data: MimicEvents) -> FhirIdIndex:
    """Recompute the MIMIC-IV-on-FHIR id of every converted row that has a FHIR key (and of its Medications)."""
    events: dict[str, list[_Target]] = defaultdict(list)
    namespaces: dict[str, str] = {}
    namespace_uuids: dict[str, uuid.UUID] = {}

    def add(namespace: str, key: str, target: _Target) -> None:
        if namespace not in namespace_uuids:
            namespace_uuids[namespace] = uuid.uuid5(MIMIC_FHIR_NAMESPACE, namespace)
        fhir_id = str(uuid.uuid5(namespace_uuids[namespace], key))
        events[fhir_id].append(target)
        namespaces[fhir_id] = namespace

    frame = data.events
    keyed = frame[frame["fhir_ns"].notna() & frame["fhir_key"].notna()]
    for namespace, key, subject, event_id, stamp, role in zip(
        keyed["fhir_ns"], keyed["fhir_key"], keyed["subject_id"], keyed["event_id"],
        keyed["timestamp"].dt.to_pydatetime(), keyed["fhir_role"],
    ):
        add(namespace, key, _Target(subject, event_id, stamp, closing=role == "end"))
    medicated = frame[frame["medication_keys"].notna()]
    for keys, subject, event_id, stamp in zip(
        medicated["medication_keys"], medicated["subject_id"], medicated["event_id"],
        medicated["timestamp"].dt.to_pydatetime(),
    ):
        for key in keys.split(MEDICATION_KEY_SEPARATOR):
            add(MEDICATION_NAMESPACE, key, _Target(subject, event_id, stamp, closing=False))
    patients = {fhir_resource_id("Patient", str(s)): str(s) for s in data.patients["subject_id"]}
    return FhirIdIndex(subject_by_patient_id=patients, events_by_fhir_id=dict(events), namespace_by_fhir_id=namespaces)


# ------------------------------------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class Task:
    """One row of the FHIR-AgentBench table, parsed."""

    line: int
    question_id: str
    question: str
    assumption: str
    patient_fhir_id: str
    true_answer_text: str
    true_answer: object  # the parsed rows, or the text when it does not parse
    true_fhir_ids: dict[str, list[str]]
    task_type: str
    template: str


def _parse_gold_ids(raw: str, path: Path, line: int) -> dict[str, list[str]]:
    raw = raw.strip()
    if not raw or raw.lower() in {"nan", "none", "{}"}:
        return {}
    try:
        parsed = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        problem = f"column 'true_fhir_ids': not a Python dict literal ({exc})"
        raise MedalignError(problem, path=path, line=line) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and all(isinstance(i, str) for i in v)
        for k, v in parsed.items()
    ):
        raise MedalignError("column 'true_fhir_ids': expected {resource type: [ids]}", path=path, line=line)
    return {k: list(v) for k, v in parsed.items()}


def _parse_answer(raw: str) -> object:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw  # e.g. answers holding nan: keep the text rather than guess


def read_tasks(tasks_csv: Path) -> list[Task]:
    """Read FHIR-AgentBench's question table (dev.csv); errors name the file and line."""
    path = Path(tasks_csv)
    if not path.is_file():
        raise MedalignError("FHIR-AgentBench task table not found", path=path)
    tasks: list[Task] = []
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        start = 1  # the header line, until a row is read (a decode error can come before)
        try:
            header = next(reader, None)
            if header is None:
                raise MedalignError("the table is empty (no header line)", path=path, line=1)
            columns = [name.strip() for name in header]
            missing = [c for c in TASK_COLUMNS if c not in columns]
            if missing:
                raise MedalignError(
                    f"missing column(s) {', '.join(missing)} (columns found: {', '.join(columns)})", path=path, line=1
                )
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1
                if not any(cell.strip() for cell in cells):
                    continue
                if len(cells) != len(columns):
                    raise MedalignError(f"row has {len(cells)} fields but the header has {len(columns)}",
                                        path=path, line=line)
                row = dict(zip(columns, cells))
                for required in ("question_id", "question", "patient_fhir_id"):
                    if not row[required].strip():
                        raise MedalignError(f"column {required!r}: empty value", path=path, line=line)
                tasks.append(
                    Task(
                        line=line,
                        question_id=row["question_id"].strip(),
                        question=row["question"].strip(),
                        assumption=row["assumption"],
                        patient_fhir_id=row["patient_fhir_id"].strip(),
                        true_answer_text=row["true_answer"],
                        true_answer=_parse_answer(row["true_answer"]),
                        true_fhir_ids=_parse_gold_ids(row["true_fhir_ids"], path, line),
                        task_type=row["task_type"],
                        template=row["template"],
                    )
                )
        except (csv.Error, UnicodeDecodeError) as exc:
            raise MedalignError(f"cannot parse the table: {exc}", path=path, line=start) from None
    return tasks


# ------------------------------------------------------------------------------------------ conversion


@dataclass
class TypeResolution:
    ids: int = 0
    resolved: int = 0


@dataclass
class EvidenceResolution:
    """How much of the gold evidence maps onto events of our records (ids counted once per question)."""

    by_type: dict[str, TypeResolution] = field(default_factory=dict)
    questions: int = 0
    questions_with_evidence: int = 0
    questions_resolved: int = 0  # questions with at least one gold id resolved
    records: ConversionSummary | None = None

    def to_json_dict(self) -> dict:
        """Per resource type {"ids", "resolved"}, plus the question counts, as evidence_resolution.json holds."""
        out: dict[str, object] = {
            name: {"ids": counts.ids, "resolved": counts.resolved} for name, counts in sorted(self.by_type.items())
        }
        out["questions"] = self.questions
        out["questions_with_evidence"] = self.questions_with_evidence
        out["questions_resolved"] = self.questions_resolved
        out["rules"] = dict(EVIDENCE_RULES)
        return out


def _instruction(task: Task, subject_id: str, index: FhirIdIndex, resolution: EvidenceResolution) -> Instruction:
    anchor = parse_time_anchor(task.assumption)
    groups: dict[str, list[str]] = {}  # gold id -> events, any of which covers it
    legacy_groups: dict[str, list[str]] = {}
    unresolved = 0
    for resource_type, fhir_ids in task.true_fhir_ids.items():
        counts = resolution.by_type.setdefault(resource_type, TypeResolution())
        for fhir_id in fhir_ids:
            counts.ids += 1
            event_ids = index.resolve(fhir_id, subject_id, anchor)
            if event_ids:
                counts.resolved += 1
                groups.setdefault(fhir_id, event_ids)  # one gold id may repeat across types: count it once
                legacy_groups.setdefault(fhir_id, index.resolve(fhir_id, subject_id, anchor, legacy=True))
            else:
                unresolved += 1
    evidence = list(dict.fromkeys(event_id for group in groups.values() for event_id in group))
    if task.true_fhir_ids:
        resolution.questions_with_evidence += 1
        if evidence:
            resolution.questions_resolved += 1
    return Instruction(
        instruction_id=task.question_id,
        patient_id=subject_id,
        question=task.question,
        reference_answers=[task.true_answer_text],
        time_anchor=anchor,
        evidence_event_ids=evidence,
        category=category_from_template(task.template),
        metadata={
            "true_answer": task.true_answer,
            "template": task.template,
            "task_type": task.task_type,
            "assumption": task.assumption,
            "unresolved_fhir_ids": unresolved,
            "evidence_groups": list(groups.values()),
            "evidence_groups_legacy": [group for group in legacy_groups.values() if group],
        },
    )


def convert_fhir_agentbench(
    tasks_csv: Path,
    data_dir: Path,
    mimic_src: Path,
    meds: Path | None,
    *,
    progress: bool = False,
    write_records: bool = True,
    subject_ids: Iterable[str | int] | None = None,
) -> EvidenceResolution:
    """Turn FHIR-AgentBench questions into the release's two tables in `data_dir`:
    `clinician-instruction-responses.tsv` (answers as `Annotator_1`) and `clinician-reviewed-model-responses.tsv`
    (every question, no model responses), as MedHELM's reader takes them.

    Also writes `data_dir/evidence_resolution.json` and, with `write_records`, the records of the questions'
    patients to `data_dir/medalign_ehr_xml/<subject_id>.xml` (converted from `mimic_src` and `meds` in the same pass, so
    evidence ids and record ids agree). `subject_ids` keeps only those patients' questions.
    """
    from medalign_rag.records.instructions import write_release_tables

    tasks_csv, data_dir = Path(tasks_csv), Path(data_dir)
    tasks = read_tasks(tasks_csv)
    wanted = {str(s) for s in subject_ids} if subject_ids is not None else None

    # Patients first (a small table) to learn which subjects the questions are about.
    patients = read_demo_table(mimic_src, "hosp/patients")
    subject_by_patient_id = {fhir_resource_id("Patient", str(s)): str(s) for s in patients["subject_id"]}
    task_subjects: list[tuple[Task, str]] = []
    for task in tasks:
        subject = subject_by_patient_id.get(task.patient_fhir_id)
        if subject is None:
            raise MedalignError(
                f"column 'patient_fhir_id': {task.patient_fhir_id!r} is the FHIR id of no patient in "
                f"{Path(mimic_src) / 'hosp/patients.csv.gz'}",
                path=tasks_csv,
                line=task.line,
            )
        if wanted is None or subject in wanted:
            task_subjects.append((task, subject))
    subjects = sorted({subject for _, subject in task_subjects})
    if not subjects:
        raise MedalignError("no question is about the selected patients", path=tasks_csv)

    data = load_with_progress(mimic_src, meds, progress=progress, subject_ids=subjects)
    index = build_fhir_id_index(data)
    resolution = EvidenceResolution(questions=len(task_subjects))
    instructions = [_instruction(task, subject, index, resolution) for task, subject in task_subjects]

    if write_records:
        resolution.records = write_mimic_records(data, data_dir, progress=progress)
        copy_dictionaries(mimic_src, data_dir)
    write_release_tables(instructions, data_dir)
    atomic_write_text(
        data_dir / "evidence_resolution.json", json.dumps(resolution.to_json_dict(), indent=2, sort_keys=False) + "\n"
    )
    return resolution
