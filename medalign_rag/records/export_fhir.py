"""Write timelines as FHIR R4 Bundles (one `<patient_id>.json` per patient), readable by any FHIR R4 tool.

    encounter                 Encounter (id = encounter id; period, type text)
    visit event               Encounter `partOf` its encounter (the encounter's own visit event, whose id is the
                              encounter id, is the Encounter itself)
    condition                 Condition (onsetDateTime; text in note)
    measurement, observation  Observation (category laboratory / exam; valueQuantity when the value is a number
                              that JSON writes back unchanged, else valueString; text in note)
    drug                      MedicationRequest (authoredOn; value as dosageInstruction text or doseQuantity)
    procedure                 Procedure (performedDateTime)
    note                      DocumentReference (the text as a base64 text/plain attachment)
    other                     Observation

Every resource keeps the event id as its FHIR id (or, when the id is not a valid FHIR id, a name-based UUID with
the event id as an identifier), so evidence ids survive the trip. What FHIR has no element for (the timeline's
kind and raw type, a unit without a number, a value on a condition) goes into extensions under
`https://github.com/medalign-rag/fhir/`, which `records/sources/fhir.py` reads back, so export-then-read gives the
same timeline. Times are written as UTC (`+00:00`): the timeline keeps wall-clock times without an offset.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

from medalign_rag.atomic import atomic_write_text
from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Encounter, Event, EventKind, PatientRecord, check_patient_id
from medalign_rag.records.sources.fhir import (
    MEDALIGN_KIND_EXTENSION,
    MEDALIGN_SOURCE_TYPE_EXTENSION,
    SYSTEM_BY_VOCABULARY,
)

__all__ = ["export_fhir", "record_to_bundle", "ExportSummary", "EXTENSION_BASE", "ID_SYSTEM"]

EXTENSION_BASE = "https://github.com/medalign-rag/fhir/StructureDefinition/"
ID_SYSTEM = "https://github.com/medalign-rag/fhir/event-id"
VALUE_EXTENSION = EXTENSION_BASE + "event-value"
UNIT_EXTENSION = EXTENSION_BASE + "event-unit"
TEXT_EXTENSION = EXTENSION_BASE + "event-text"
NO_VISIT_EVENT_EXTENSION = EXTENSION_BASE + "encounter-without-visit-event"
GENDER_TEXT_EXTENSION = EXTENSION_BASE + "gender-text"
BIRTH_TIME_EXTENSION = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/medalign-rag/fhir")
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_FHIR_GENDERS = {"male", "female", "other", "unknown"}
_GENDER_WORDS = {"m": "male", "male": "male", "f": "female", "female": "female"}


@dataclass
class ExportSummary:
    patients: int = 0
    resources: int = 0
    files: list[Path] | None = None


def _fhir_time(value: datetime) -> str:
    return value.isoformat(timespec="microseconds" if value.microsecond else "seconds") + "+00:00"


def _concept(code: str | None, name: str | None) -> dict:
    concept: dict = {}
    if code:
        vocabulary, _, local = code.partition("/")
        if local:
            system = SYSTEM_BY_VOCABULARY.get(vocabulary, f"{EXTENSION_BASE}vocabulary/{vocabulary}")
            concept["coding"] = [{"system": system, "code": local}]
        else:
            concept["coding"] = [{"system": f"{EXTENSION_BASE}vocabulary", "code": code}]
    if name:
        concept["text"] = name
    if not concept:  # FHIR allows no empty strings: say the name is unknown
        concept["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                 "valueCode": "unknown"}]
    return concept


def _json_number(value: str | None) -> int | float | None:
    """The value as a JSON number when writing it gives back the same text, else None."""
    if value is None or not re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?", value):
        return None
    if "." not in value:
        return int(value)
    number = float(value)
    return number if repr(number) == value else None


class _Ids:
    """FHIR ids for timeline ids: the id itself when valid, else a name-based UUID (original kept as identifier)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, kind: str, original: str) -> tuple[str, list[dict]]:
        if _FHIR_ID.match(original):
            return original, []
        return str(uuid.uuid5(_NAMESPACE, f"{kind}/{original}")), [{"system": ID_SYSTEM, "value": original}]


def _full_url(kind: str, fhir_id: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{kind}/{fhir_id}')}"


def _extensions(event: Event, *, value: bool = False, unit: bool = False, text: bool = False) -> list[dict]:
    """Our kind/raw type always; value, unit or text when the resource has no element for them."""
    found = [{"url": MEDALIGN_KIND_EXTENSION, "valueCode": event.kind.value}]
    if event.source_type:
        found.append({"url": MEDALIGN_SOURCE_TYPE_EXTENSION, "valueString": event.source_type})
    for wanted, url, content in ((value, VALUE_EXTENSION, event.value), (unit, UNIT_EXTENSION, event.unit),
                                 (text, TEXT_EXTENSION, event.text)):
        if wanted and content is not None:
            found.append({"url": url, "valueString": content})
    return found


def _patient(record: PatientRecord, fhir_id: str, identifiers: list[dict]) -> dict:
    patient: dict = {"resourceType": "Patient", "id": fhir_id}
    if identifiers:
        patient["identifier"] = identifiers
    extensions: list[dict] = []
    demo = record.demographics
    for field, url in (("race", "us-core-race"), ("ethnicity", "us-core-ethnicity")):
        text = getattr(demo, field)
        if text:
            extensions.append({"url": f"http://hl7.org/fhir/us/core/StructureDefinition/{url}",
                               "extension": [{"url": "text", "valueString": text}]})
    if demo.gender:
        mapped = _GENDER_WORDS.get(demo.gender.lower(), demo.gender if demo.gender in _FHIR_GENDERS else "unknown")
        patient["gender"] = mapped
        if mapped != demo.gender:
            extensions.append({"url": GENDER_TEXT_EXTENSION, "valueString": demo.gender})
    if demo.birthdate:
        patient["birthDate"] = demo.birthdate.date().isoformat()
        if demo.birthdate.time() != datetime.min.time():
            patient["_birthDate"] = {"extension": [{"url": BIRTH_TIME_EXTENSION,
                                                    "valueDateTime": _fhir_time(demo.birthdate)}]}
    if extensions:
        patient["extension"] = extensions
    return patient


def _encounter(encounter: Encounter, fhir_id: str, identifiers: list[dict], subject: dict,
               own_event: Event | None) -> dict:
    resource: dict = {
        "resourceType": "Encounter", "id": fhir_id, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"text": encounter.type}], "subject": subject,
        "period": {"start": _fhir_time(encounter.start)},
    }
    if identifiers:
        resource["identifier"] = identifiers
    if encounter.end is not None:
        resource["period"]["end"] = _fhir_time(encounter.end)
    if own_event is None:
        resource["extension"] = [{"url": NO_VISIT_EVENT_EXTENSION, "valueBoolean": True}]
    else:
        # The encounter's own visit event: its name and code go into a second type, the rest into extensions.
        resource["type"].append(_concept(own_event.code, own_event.name))
        resource["extension"] = _extensions(own_event, value=True, unit=True, text=True)
        if own_event.timestamp != encounter.start:
            resource["extension"].append({"url": EXTENSION_BASE + "event-time",
                                          "valueDateTime": _fhir_time(own_event.timestamp)})
    return resource


def _event_resource(event: Event, fhir_id: str, identifiers: list[dict], subject: dict,
                    encounter_ref: dict) -> dict:
    kind = event.kind
    note = [{"text": event.text}] if event.text is not None else None
    if kind is EventKind.visit:
        resource = {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [_concept(event.code, event.name)], "subject": subject,
            "period": {"start": _fhir_time(event.timestamp)}, "partOf": encounter_ref,
            "extension": _extensions(event, value=True, unit=True, text=True),
        }
    elif kind is EventKind.condition:
        resource = {"resourceType": "Condition", "code": _concept(event.code, event.name), "subject": subject,
                    "encounter": encounter_ref, "onsetDateTime": _fhir_time(event.timestamp),
                    "extension": _extensions(event, value=True, unit=True)}
        if note:
            resource["note"] = note
    elif kind is EventKind.drug:
        resource = {"resourceType": "MedicationRequest", "status": "completed", "intent": "order",
                    "medicationCodeableConcept": _concept(event.code, event.name), "subject": subject,
                    "encounter": encounter_ref, "authoredOn": _fhir_time(event.timestamp),
                    "extension": _extensions(event, unit=True)}
        if event.value is not None:
            resource["dosageInstruction"] = [{"text": event.value}]
        if note:
            resource["note"] = note
    elif kind is EventKind.procedure:
        resource = {"resourceType": "Procedure", "status": "completed", "code": _concept(event.code, event.name),
                    "subject": subject, "encounter": encounter_ref,
                    "performedDateTime": _fhir_time(event.timestamp),
                    "extension": _extensions(event, value=True, unit=True)}
        if note:
            resource["note"] = note
    elif kind is EventKind.note:
        body = event.text or ""
        resource = {
            "resourceType": "DocumentReference", "status": "current", "type": _concept(event.code, event.name),
            "subject": subject, "date": _fhir_time(event.timestamp),
            "content": [{"attachment": {"contentType": "text/plain; charset=utf-8",
                                        "data": base64.b64encode(body.encode("utf-8")).decode("ascii")}}],
            "context": {"encounter": [encounter_ref]},
            "extension": _extensions(event, unit=True),
        }
        if event.value is not None:
            resource["description"] = event.value
    else:  # measurement, observation, other
        category = {EventKind.measurement: "laboratory", EventKind.observation: "exam"}.get(kind)
        resource = {"resourceType": "Observation", "status": "final", "code": _concept(event.code, event.name),
                    "subject": subject, "encounter": encounter_ref,
                    "effectiveDateTime": _fhir_time(event.timestamp), "extension": _extensions(event)}
        if category:
            resource["category"] = [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]
        number = _json_number(event.value)
        if number is not None:
            resource["valueQuantity"] = {"value": number}
            if event.unit is not None:
                resource["valueQuantity"]["unit"] = event.unit
        else:
            if event.value is not None:
                resource["valueString"] = event.value
            if event.unit is not None:
                resource["extension"].append({"url": UNIT_EXTENSION, "valueString": event.unit})
        if note:
            resource["note"] = note
    resource = {"resourceType": resource.pop("resourceType"), "id": fhir_id, **resource}
    if identifiers:
        resource["identifier"] = identifiers
    return resource


def record_to_bundle(record: PatientRecord) -> dict:
    """One patient's timeline as a FHIR R4 Bundle (type `collection`)."""
    ids = _Ids()
    patient_id, patient_identifiers = ids("Patient", record.patient_id)
    entries: list[dict] = []

    def add(resource: dict) -> None:
        entries.append({"fullUrl": _full_url(resource["resourceType"], resource["id"]), "resource": resource})

    add(_patient(record, patient_id, patient_identifiers))
    subject = {"reference": _full_url("Patient", patient_id)}
    for encounter in record.encounters:
        encounter_id, encounter_identifiers = ids("Encounter", encounter.encounter_id)
        own = next((ev for ev in encounter.events
                    if ev.event_id == encounter.encounter_id and ev.kind is EventKind.visit), None)
        add(_encounter(encounter, encounter_id, encounter_identifiers, subject, own))
        encounter_ref = {"reference": _full_url("Encounter", encounter_id)}
        for event in encounter.events:
            if event is own:
                continue
            kind = "Encounter" if event.kind is EventKind.visit else "Event"
            event_id, event_identifiers = ids(kind, event.event_id)
            add(_event_resource(event, event_id, event_identifiers, subject, encounter_ref))
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def export_fhir(source, out_dir: str | os.PathLike, patient_ids: Iterable[str] | None = None,
                on_patient: Callable[[str], None] | None = None) -> ExportSummary:
    """Write each patient of `source` (any RecordSource) as `<out_dir>/<patient_id>.json`; files are atomic."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MedalignError("the output must be a folder", path=out)
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(files=[])
    for patient_id in patient_ids if patient_ids is not None else source.patient_ids():
        check_patient_id(patient_id, path=str(out))
        bundle = record_to_bundle(source.load_record(patient_id))
        path = out / f"{patient_id}.json"
        atomic_write_text(path, json.dumps(bundle, ensure_ascii=False, indent=1))
        summary.patients += 1
        summary.resources += len(bundle["entry"])
        summary.files.append(path)
        if on_patient is not None:
            on_patient(patient_id)
    return summary
