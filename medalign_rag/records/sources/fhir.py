"""FHIR R4 records: a folder of Bundle JSON files (Synthea-style, one per patient) or an NDJSON bulk export.

What becomes what (FHIR R4 element names):

| resource | timeline | time from |
|---|---|---|
| Patient | demographics (birthDate, gender, US Core race/ethnicity) | |
| Encounter | an encounter (id = resource id) and its visit event (same id); one with `partOf` a visit event inside its parent | period |
| Condition, AllergyIntolerance | condition | onset[x], recordedDate |
| Observation | measurement (category laboratory / vital-signs) or observation; value[x] or components | effective[x], issued |
| MedicationRequest / MedicationStatement / MedicationAdministration / Immunization | drug | authoredOn, effective[x], dateAsserted, occurrence[x] |
| Procedure | procedure | performed[x] |
| DiagnosticReport | note when it carries `presentedForm` text, else observation (conclusion) | effective[x], issued |
| DocumentReference | note (inline or base64 attachments decoded) | date, context.period |

Resource ids are the event ids, so evidence given as FHIR ids (FHIR-AgentBench's form) maps one to one. Events
whose encounter reference resolves go into that encounter; the others are grouped per calendar day
(`<patient>-day-YYYYMMDD`). Any other resource type is skipped and counted. References are resolved within the
patient's bundle, across the folder's files without a Patient (Synthea's `hospitalInformation*.json` and
`practitionerInformation*.json`, which conditional references such as `Practitioner?identifier=sys|val` point to),
and to contained resources; one that does not resolve keeps its `display` (or the reference text) as a name.

Times are kept as written on the wall clock (the offset is dropped), as MedAlign's and MIMIC's records keep local
times and the questions asked about them use local times.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import (
    Demographics,
    Encounter,
    Event,
    EventKind,
    Instruction,
    ModelResponse,
    PatientRecord,
    check_patient_id,
)
from medalign_rag.records.sources import SourceWarnings, register_source

__all__ = ["FhirSource", "looks_like_fhir", "fhir_code", "VOCABULARY_BY_SYSTEM", "SYSTEM_BY_VOCABULARY",
           "MEDALIGN_KIND_EXTENSION", "MEDALIGN_SOURCE_TYPE_EXTENSION", "parse_fhir_datetime"]

# Short vocabulary names (the `VOCAB/CODE` form the rest of the project uses) for common FHIR code systems.
VOCABULARY_BY_SYSTEM: dict[str, str] = {
    "http://snomed.info/sct": "SNOMED",
    "http://loinc.org": "LOINC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-9-cm": "ICD9CM",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://www.ama-assn.org/go/cpt": "CPT4",
    "http://unitsofmeasure.org": "UCUM",
}
SYSTEM_BY_VOCABULARY = {vocab: system for system, vocab in VOCABULARY_BY_SYSTEM.items()}
# Our exporter records the timeline's own kind and raw type on each resource, so a round trip is exact; foreign
# FHIR never carries these and is read by the table above.
MEDALIGN_KIND_EXTENSION = "https://github.com/medalign-rag/fhir/StructureDefinition/event-kind"
MEDALIGN_SOURCE_TYPE_EXTENSION = "https://github.com/medalign-rag/fhir/StructureDefinition/source-type"
_OURS = "https://github.com/medalign-rag/fhir/StructureDefinition/"
_OUR_VOCABULARY = _OURS + "vocabulary"
_ID_SYSTEM = "https://github.com/medalign-rag/fhir/event-id"

_EVENT_TYPES = {
    "Condition", "AllergyIntolerance", "Observation", "MedicationRequest", "MedicationStatement", "MedicationAdministration",
    "Immunization", "Procedure", "DiagnosticReport", "DocumentReference",
}
# Read as reference targets (names), not as events; neither counted as skipped.
_TARGET_TYPES = {
    "Patient", "Encounter", "Practitioner", "PractitionerRole", "Organization", "Location", "Medication",
}
_MEASUREMENT_CATEGORIES = {"laboratory", "vital-signs"}
_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def looks_like_fhir(path: Path) -> bool:
    """A .ndjson file, a .json file holding a FHIR resource, or a folder of them."""
    if path.is_file():
        return path.suffix.lower() == ".ndjson" or (path.suffix.lower() == ".json" and _peek_resource_type(path))
    if not path.is_dir():
        return False
    if any(p.is_file() for p in path.glob("*.ndjson")):
        return True
    return any(_peek_resource_type(p) for p in sorted(path.glob("*.json"))[:3])


def _peek_resource_type(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return b'"resourceType"' in head


# ------------------------------------------------------------------------------------------------ values


def parse_fhir_datetime(raw: Any) -> datetime | None:
    """A FHIR date / dateTime / instant as a naive wall-clock datetime (offset dropped); None if not one.

    Partial dates (`2020`, `2020-05`) fall on the first day of that year or month.
    """
    if not isinstance(raw, str) or not raw.strip():
        return None
    text = raw.strip()
    if re.fullmatch(r"\d{4}", text):
        text += "-01-01"
    elif re.fullmatch(r"\d{4}-\d{2}", text):
        text += "-01"
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value.replace(tzinfo=None)


def fhir_code(concept: dict | None) -> tuple[str | None, str | None]:
    """(`VOCAB/CODE` of the first coding, display name) of a CodeableConcept."""
    if not isinstance(concept, dict):
        return None, None
    code = None
    name = concept.get("text") if isinstance(concept.get("text"), str) else None
    for coding in concept.get("coding") or []:
        if not isinstance(coding, dict):
            continue
        if code is None and coding.get("code"):
            system = coding.get("system") or ""
            if system == _OUR_VOCABULARY:  # a code that had no vocabulary prefix
                code = str(coding["code"])
                continue
            vocabulary = VOCABULARY_BY_SYSTEM.get(system) or (system.rstrip("/").rsplit("/", 1)[-1] or "CODE")
            code = f"{vocabulary}/{coding['code']}"
        if name is None and isinstance(coding.get("display"), str):
            name = coding["display"]
    return code, name


def _number_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return str(value)


def _quantity(quantity: dict | None) -> tuple[str | None, str | None]:
    if not isinstance(quantity, dict):
        return None, None
    value = _number_text(quantity.get("value"))
    if value is not None and quantity.get("comparator"):
        value = f"{quantity['comparator']}{value}"
    unit = quantity.get("unit") or quantity.get("code")
    return value, unit if isinstance(unit, str) else None


def _value_x(resource: dict) -> tuple[str | None, str | None]:
    """(value, unit) of an Observation-style value[x]."""
    if "valueQuantity" in resource:
        return _quantity(resource["valueQuantity"])
    if "valueCodeableConcept" in resource:
        code, name = fhir_code(resource["valueCodeableConcept"])
        return name or code, None
    for key in ("valueString", "valueInteger", "valueDateTime", "valueTime"):
        if key in resource:
            return _number_text(resource[key]) if key == "valueInteger" else str(resource[key]), None
    if "valueBoolean" in resource:
        return ("yes" if resource["valueBoolean"] else "no"), None
    if "valueRange" in resource:
        low, unit = _quantity(resource["valueRange"].get("low"))
        high, unit_high = _quantity(resource["valueRange"].get("high"))
        return f"{low or ''}-{high or ''}", unit or unit_high
    if "valueRatio" in resource:
        num, unit = _quantity(resource["valueRatio"].get("numerator"))
        den, _ = _quantity(resource["valueRatio"].get("denominator"))
        return f"{num}/{den}", unit
    if "valuePeriod" in resource:
        period = resource["valuePeriod"]
        return f"{period.get('start', '')}..{period.get('end', '')}", None
    return None, None


def _decode_attachment(attachment: dict) -> str | None:
    """The text of an attachment's inline `data` (base64), when it is text."""
    data = attachment.get("data")
    if not isinstance(data, str) or not data:
        return None
    content_type = str(attachment.get("contentType") or "text/plain").lower()
    if not (content_type.startswith("text/") or "json" in content_type or "xml" in content_type):
        return None
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        return None
    charset = re.search(r"charset=([\w\-]+)", content_type)
    try:
        return raw.decode(charset.group(1) if charset else "utf-8", errors="replace").strip()
    except LookupError:
        return raw.decode("utf-8", errors="replace").strip()


def _own_extension(resource: dict, url: str, key: str | None = None) -> Any:
    for extension in resource.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            if key is not None:
                return extension.get(key)
            for value_key in ("valueCode", "valueString", "valueBoolean", "valueDateTime"):
                if value_key in extension:
                    return extension[value_key]
    return None


def _apply_our_extensions(event: Event, resource: dict) -> Event:
    """Value, unit and text our exporter kept in extensions (where the resource had no element for them)."""
    updates = {}
    for field in ("value", "unit", "text"):
        found = _own_extension(resource, _OURS + f"event-{field}")
        if found is not None:
            updates[field] = str(found)
    return event.model_copy(update=updates) if updates else event


# ------------------------------------------------------------------------------------------------ files


@dataclass
class _Resource:
    resource: dict
    where: str  # "file.json: Observation/123" or "file.ndjson:17"
    full_url: str | None = None


@dataclass
class _PatientFiles:
    """Where one patient's resources are: whole bundles, and (file, line or entry) positions of the others."""

    bundles: list[Path] = field(default_factory=list)
    lines: dict[Path, list[int]] = field(default_factory=lambda: defaultdict(list))  # ndjson byte offsets
    entries: dict[Path, list[int]] = field(default_factory=lambda: defaultdict(list))  # positions in bundles


def _load_json(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return json.load(handle, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise MedalignError(f"malformed JSON: {exc.msg} (column {exc.colno})", path=path, line=exc.lineno) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MedalignError(f"cannot read FHIR file: {exc}", path=path) from None


def _iter_ndjson(path: Path) -> Iterator[tuple[int, int, dict]]:
    """(line number, byte offset, resource) of each line of an NDJSON file."""
    try:
        with open(path, "rb") as handle:
            offset = 0
            for number, line in enumerate(handle, start=1):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                yield number, start, _parse_line(line, path, number)
    except OSError as exc:
        raise MedalignError(f"cannot read FHIR file: {exc}", path=path) from None


def _parse_line(line: bytes, path: Path, number: int) -> dict:
    try:
        resource = json.loads(line, parse_float=Decimal)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedalignError(f"malformed JSON line: {exc}", path=path, line=number) from None
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise MedalignError("line is not a FHIR resource (no resourceType)", path=path, line=number)
    return resource


def _entries(bundle: Any, path: Path) -> list[tuple[dict, str | None]]:
    """(resource, fullUrl) pairs of a Bundle, or the one resource of a non-Bundle file."""
    if not isinstance(bundle, dict) or not isinstance(bundle.get("resourceType"), str):
        raise MedalignError("not a FHIR resource (no resourceType)", path=path)
    if bundle["resourceType"] != "Bundle":
        return [(bundle, None)]
    found = []
    for position, entry in enumerate(bundle.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise MedalignError(f"Bundle entry {position} has no resource with a resourceType", path=path)
        found.append((resource, entry.get("fullUrl")))
    return found


_PATIENT_KEYS = ("subject", "patient", "beneficiary")


def _patient_reference(resource: dict) -> str | None:
    for key in _PATIENT_KEYS:
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return ref["reference"]
    return None


def _reference_id(reference: str, resource_type: str) -> str | None:
    """The id in `Type/id` (relative or absolute URL, possibly with /_history/n) when Type is `resource_type`."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return None


def _original_id(resource: dict) -> str | None:
    """The timeline id our exporter kept as an identifier when it was not a valid FHIR id."""
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == _ID_SYSTEM and identifier.get("value"):
            return str(identifier["value"])
    return None


def _patient_id_of(resource: dict, full_url: str | None) -> str | None:
    if _original_id(resource):
        return _original_id(resource)
    if resource.get("id"):
        return str(resource["id"])
    if full_url and full_url.startswith("urn:uuid:"):
        return full_url[len("urn:uuid:"):]
    return None


# ------------------------------------------------------------------------------------------------ the source


@register_source("fhir", detect=looks_like_fhir)
class FhirSource:
    """FHIR R4 Bundles (one per patient) and/or NDJSON resources in one folder (or one file)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_file():
            self.files = [self.path]
        elif self.path.is_dir():
            self.files = sorted(
                p for p in self.path.iterdir()
                if p.is_file() and p.suffix.lower() in (".json", ".ndjson") and not p.name.startswith(".")
            )
        else:
            raise MedalignError("FHIR data not found", path=self.path)
        if not self.files:
            raise MedalignError("no .json or .ndjson FHIR files", path=self.path)
        self.warnings = SourceWarnings()
        self._patients: dict[str, _PatientFiles] | None = None
        self._shared_files: list[Path] = []
        self._shared: dict[str, list[_Resource]] | None = None  # reference key -> resources
        # A server builds indexes from several threads: the file index and the shared targets are built once.
        self._lock = threading.RLock()

    # -------------------------------------------------------------------------- index of files (built once)

    def _index(self) -> dict[str, _PatientFiles]:
        if self._patients is not None:
            return self._patients
        with self._lock:
            if self._patients is None:
                self._patients = self._scan()
            return self._patients

    def _scan(self) -> dict[str, _PatientFiles]:
        patients: dict[str, _PatientFiles] = defaultdict(_PatientFiles)
        pending: list[tuple[Path, int, str]] = []  # (file, position, patient reference) resolved after the scan
        url_to_patient: dict[str, str] = {}
        for path in self.files:
            if path.suffix.lower() == ".ndjson":
                for number, offset, resource in _iter_ndjson(path):
                    if resource["resourceType"] == "Patient":
                        pid = _patient_id_of(resource, None)
                        if pid is None:
                            raise MedalignError("Patient resource has no id", path=path, line=number)
                        check_patient_id(pid, path=f"{path}:{number}")
                        patients[pid].lines[path].append(offset)
                    elif (ref := _patient_reference(resource)) is not None:
                        pending.append((path, offset, ref))
                    elif resource["resourceType"] in _TARGET_TYPES:
                        self._shared_files.append(path)
                continue
            entries = _entries(_load_json(path), path)
            owners = []
            for resource, full_url in entries:
                if resource["resourceType"] == "Patient":
                    pid = _patient_id_of(resource, full_url)
                    if pid is None:
                        raise MedalignError("Patient resource has no id or urn:uuid fullUrl", path=path)
                    check_patient_id(pid, path=str(path))
                    owners.append(pid)
                    if full_url:
                        url_to_patient[full_url] = pid
            if len(owners) == 1:
                patients[owners[0]].bundles.append(path)
                continue
            # A file of shared resources (Synthea's hospital/practitioner bundles), or several patients'
            # resources together: split by patient reference.
            self._shared_files.append(path)
            for position, (resource, full_url) in enumerate(entries):
                if resource["resourceType"] == "Patient":
                    patients[_patient_id_of(resource, full_url)].entries[path].append(position)
                elif (ref := _patient_reference(resource)) is not None:
                    pending.append((path, position, ref))
        for path, position, ref in pending:
            pid = url_to_patient.get(ref) or _reference_id(ref, "Patient")
            if pid is None or pid not in patients:
                self.warnings.add("resource of an unknown patient skipped", f"{path.name}: {ref}")
                continue
            target = patients[pid].lines if path.suffix.lower() == ".ndjson" else patients[pid].entries
            target[path].append(position)
        self._shared_files = sorted(set(self._shared_files))
        return dict(patients)

    def patient_ids(self) -> list[str]:
        return sorted(self._index())

    def vocabulary_terms(self) -> list:
        """CodeSystem / ValueSet resources among the files (displays, designations) and a `vocabulary/` folder
        beside them (records/source_vocabulary.py). Only files that start with a terminology resource are read."""
        from medalign_rag.records.source_vocabulary import VOCABULARY_DIRNAME, fhir_terminology_terms, folder_terms

        resources: list[dict] = []
        for path in self.files:
            try:
                with open(path, "rb") as handle:
                    head = handle.read(2048)
            except OSError:
                continue
            if b'"CodeSystem"' not in head and b'"ValueSet"' not in head and b'"Bundle"' not in head:
                continue
            if path.suffix.lower() == ".ndjson":
                resources.extend(r for _, _, r in _iter_ndjson(path) if r["resourceType"] in ("CodeSystem", "ValueSet"))
            elif b'"Bundle"' not in head:
                resources.append(_load_json(path))
        folder = self.path.parent if self.path.is_file() else self.path
        return fhir_terminology_terms(resources) + folder_terms(folder / VOCABULARY_DIRNAME)

    def _files_of(self, patient_id: str) -> _PatientFiles:
        check_patient_id(patient_id, path=str(self.path))
        found = self._index().get(patient_id)
        if found is None:
            raise MedalignError(f"no FHIR Patient {patient_id!r}", path=self.path)
        return found

    def fingerprint(self, patient_id: str) -> str:
        """sha256 over the patient's bundle files, their NDJSON lines, and the shared reference files."""
        located = self._files_of(patient_id)
        digest = hashlib.sha256()
        for path in sorted({*located.bundles, *located.entries, *self._shared_files}):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        for path, offsets in sorted(located.lines.items()):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for offset in offsets:
                    handle.seek(offset)
                    digest.update(handle.readline())
        return digest.hexdigest()

    def instructions(self) -> list[Instruction]:
        return []

    def model_responses(self) -> list[ModelResponse]:
        return []

    # -------------------------------------------------------------------------- resources of one patient

    def _shared_targets(self) -> dict[str, list[_Resource]]:
        """Reference targets (Practitioner, Organization, Location, Medication, ...) from files without one owner."""
        with self._lock:
            return self._build_shared_targets()

    def _build_shared_targets(self) -> dict[str, list[_Resource]]:
        if self._shared is None:
            self._index()
            shared: dict[str, list[_Resource]] = defaultdict(list)
            for path in self._shared_files:
                if path.suffix.lower() == ".ndjson":
                    items = [(r, f"{path.name}:{n}", None) for n, _, r in _iter_ndjson(path)]
                else:
                    items = [(r, f"{path.name}: {r['resourceType']}/{r.get('id', '?')}", u)
                             for r, u in _entries(_load_json(path), path)]
                for resource, where, full_url in items:
                    if resource["resourceType"] in _TARGET_TYPES and resource["resourceType"] != "Patient":
                        item = _Resource(resource, where, full_url)
                        for key in _reference_keys(resource, full_url):
                            shared[key].append(item)
            self._shared = dict(shared)
        return self._shared

    def _patient_resources(self, located: _PatientFiles) -> list[_Resource]:
        found: list[_Resource] = []
        for path in located.bundles:
            for resource, full_url in _entries(_load_json(path), path):
                found.append(_Resource(resource, f"{path.name}: {resource['resourceType']}/{resource.get('id', '?')}",
                                       full_url))
        for path, positions in located.entries.items():
            entries = _entries(_load_json(path), path)
            for position in positions:
                resource, full_url = entries[position]
                found.append(_Resource(resource, f"{path.name}: {resource['resourceType']}/{resource.get('id', '?')}",
                                       full_url))
        for path, offsets in located.lines.items():
            with open(path, "rb") as handle:
                for offset in sorted(offsets):
                    handle.seek(offset)
                    line = handle.readline()
                    resource = _parse_line(line, path, 0)
                    found.append(_Resource(resource, f"{path.name}: {resource['resourceType']}/{resource.get('id', '?')}"))
        return found

    def load_record(self, patient_id: str) -> PatientRecord:
        located = self._files_of(patient_id)
        resources = self._patient_resources(located)
        return _Timeline(patient_id, resources, self._shared_targets(), self.warnings).build()


def _reference_keys(resource: dict, full_url: str | None) -> list[str]:
    """Every key a reference to this resource may use: fullUrl, Type/id, Type?identifier=system|value."""
    kind = resource["resourceType"]
    keys = []
    if full_url:
        keys.append(full_url)
    if resource.get("id"):
        keys.append(f"{kind}/{resource['id']}")
    for identifier in resource.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            keys.append(f"{kind}?identifier={identifier.get('system', '')}|{identifier['value']}")
            keys.append(f"{kind}?identifier={identifier['value']}")
    return keys


class _Timeline:
    """Turns one patient's resources into a PatientRecord."""

    def __init__(self, patient_id: str, resources: list[_Resource], shared: dict[str, list[_Resource]],
                 warnings: SourceWarnings) -> None:
        self.patient_id = patient_id
        self.resources = resources
        self.shared = shared
        self.warnings = warnings
        self.local: dict[str, _Resource] = {}
        for item in resources:
            for key in _reference_keys(item.resource, item.full_url):
                self.local.setdefault(key, item)

    # ------------------------------------------------------------------ references

    def resolve(self, reference: Any, container: dict | None = None) -> dict | None:
        if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
            return None
        ref = reference["reference"]
        if ref.startswith("#") and container is not None:
            for contained in container.get("contained") or []:
                if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                    return contained
            return None
        # Absolute URLs: the server base does not matter, the Type/id tail does.
        match = re.search(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$", ref)
        keys = [ref] + ([f"{match.group(1)}/{match.group(2)}"] if match and not ref.startswith("urn:") else [])
        for key in keys:
            if key in self.local:
                return self.local[key].resource
            if key in self.shared:
                return self.shared[key][0].resource
        return None

    def reference_name(self, reference: Any, container: dict | None = None) -> str | None:
        """A readable name for what `reference` points at; its display or text when it does not resolve."""
        if not isinstance(reference, dict):
            return None
        target = self.resolve(reference, container)
        if target is not None:
            name = target.get("name")
            if isinstance(name, list) and name:  # HumanName
                first = name[0]
                if first.get("text"):
                    return first["text"]
                return " ".join([*first.get("prefix", []), *first.get("given", []), first.get("family", "")]).strip()
            if isinstance(name, str):
                return name
            code, display = fhir_code(target.get("code"))
            if display or code:
                return display or code
        return reference.get("display") or reference.get("reference")

    # ------------------------------------------------------------------ building

    def build(self) -> PatientRecord:
        demographics = Demographics()
        encounters: dict[str, Encounter] = {}
        encounter_keys: dict[str, str] = {}  # reference key -> encounter id
        sub_visits: list[tuple[_Resource, str]] = []
        seen_ids: set[str] = set()
        usable: list[_Resource] = []
        for item in self.resources:
            kind = item.resource["resourceType"]
            if kind not in _EVENT_TYPES and kind not in _TARGET_TYPES:
                self.warnings.add(f"unsupported FHIR resource type {kind} skipped", item.where)
                continue
            resource_id = item.resource.get("id")
            if kind in _EVENT_TYPES or kind == "Encounter":
                original = _original_id(item.resource)
                if original:  # our exporter's stand-in id for a timeline id FHIR cannot hold
                    resource_id = original
                    item.resource = {**item.resource, "id": resource_id}
                elif not resource_id and item.full_url and item.full_url.startswith("urn:uuid:"):
                    resource_id = item.full_url[len("urn:uuid:"):]
                    item.resource = {**item.resource, "id": resource_id}
                if not resource_id or not (original or _FHIR_ID.match(str(resource_id))):
                    self.warnings.add("resource without a usable id skipped", item.where)
                    continue
                if resource_id in seen_ids:
                    self.warnings.add("duplicate resource id skipped", item.where)
                    continue
                seen_ids.add(resource_id)
            if kind == "Patient":
                demographics = self.demographics(item.resource)
            elif kind == "Encounter":
                usable.append(item)
        # Encounters first (events point at them); an Encounter `partOf` another is a visit event inside it.
        for item in usable:
            resource = item.resource
            parent = resource.get("partOf")
            start, end = self.period(resource.get("period"))
            if start is None:
                self.warnings.add("Encounter without period.start skipped", item.where)
                continue
            if isinstance(parent, dict) and parent.get("reference"):
                sub_visits.append((item, parent["reference"]))
                continue
            encounter_id = str(resource["id"])
            # Our exporter marks encounters that had no visit event of their own; any other Encounter is one.
            own_event = [] if _own_extension(resource, _OURS + "encounter-without-visit-event") is not None \
                else [self.visit_event(resource, start)]
            encounters[encounter_id] = Encounter(
                encounter_id=encounter_id, type=self.encounter_type(resource), start=start, end=end,
                events=own_event,
            )
            for key in _reference_keys(resource, item.full_url):
                encounter_keys[key] = encounter_id
        day_encounters: dict[date, Encounter] = {}

        def place(event: Event, reference: Any, where: str) -> None:
            encounter_id = None
            if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
                ref = reference["reference"]
                encounter_id = encounter_keys.get(ref)
                if encounter_id is None:
                    tail = _reference_id(ref, "Encounter")
                    encounter_id = encounter_keys.get(f"Encounter/{tail}") if tail else None
                if encounter_id is None:
                    self.warnings.add("reference to a missing Encounter (event placed by its day)", f"{where}: {ref}")
            if encounter_id is not None:
                encounters[encounter_id].events.append(event)
                return
            day = event.timestamp.date()
            holder = day_encounters.get(day)
            if holder is None:
                start = datetime.combine(day, datetime.min.time())
                holder = day_encounters[day] = Encounter(
                    encounter_id=f"{self.patient_id}-day-{day:%Y%m%d}", type="day without an encounter",
                    start=start, end=None,
                )
            holder.events.append(event)

        # Visit events of sub-encounters and the other events, in the order of the files.
        parent_of = {id(item): parent_ref for item, parent_ref in sub_visits}
        for item in self.resources:
            resource = item.resource
            if id(item) in parent_of:
                event = self.visit_event(resource, self.period(resource.get("period"))[0])
                place(event, {"reference": parent_of[id(item)]}, item.where)
                continue
            if resource["resourceType"] not in _EVENT_TYPES or item.where is None:
                continue
            if not resource.get("id") or resource["id"] not in seen_ids:
                continue
            seen_ids.discard(resource["id"])  # a duplicate later in the list was already skipped above
            try:
                event, encounter_reference = self.event(resource)
            except _Skip as skip:
                self.warnings.add(skip.reason, item.where)
                continue
            place(event, encounter_reference, item.where)
        ordered = sorted([*encounters.values(), *day_encounters.values()], key=lambda e: (e.start, e.encounter_id))
        for encounter in ordered:
            encounter.events.sort(key=lambda ev: ev.timestamp)
            if encounter.end is None and encounter.encounter_id.startswith(f"{self.patient_id}-day-"):
                encounter.end = max(ev.timestamp for ev in encounter.events)
        if not ordered:
            raise MedalignError(f"patient {self.patient_id!r} has no encounters or dated clinical resources")
        return PatientRecord(patient_id=self.patient_id, demographics=demographics, encounters=ordered)

    def demographics(self, patient: dict) -> Demographics:
        race = ethnicity = None
        for extension in patient.get("extension") or []:
            url = extension.get("url", "") if isinstance(extension, dict) else ""
            text = next((sub.get("valueString") for sub in extension.get("extension") or []
                         if isinstance(sub, dict) and sub.get("url") == "text"), None) if url else None
            if url.endswith("us-core-race"):
                race = text
            elif url.endswith("us-core-ethnicity"):
                ethnicity = text
        birth = parse_fhir_datetime(patient.get("birthDate"))
        birth_time = _own_extension(patient.get("_birthDate") or {},
                                    "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime")
        birth = parse_fhir_datetime(birth_time) or birth
        gender = _own_extension(patient, _OURS + "gender-text") or patient.get("gender")
        return Demographics(birthdate=birth, gender=gender, race=race, ethnicity=ethnicity)

    @staticmethod
    def period(period: Any) -> tuple[datetime | None, datetime | None]:
        if not isinstance(period, dict):
            return None, None
        return parse_fhir_datetime(period.get("start")), parse_fhir_datetime(period.get("end"))

    @staticmethod
    def encounter_type(resource: dict) -> str:
        for concept in resource.get("type") or []:
            code, name = fhir_code(concept)
            if name or code:
                return name or code
        service = fhir_code(resource.get("serviceType"))
        if service[1]:
            return service[1]
        klass = resource.get("class")
        if isinstance(klass, dict):
            return klass.get("display") or klass.get("code") or "encounter"
        return "encounter"

    def visit_event(self, resource: dict, start: datetime) -> Event:
        if _own_extension(resource, MEDALIGN_KIND_EXTENSION) is not None:
            return self.our_visit_event(resource, start)
        details = []
        klass = resource.get("class")
        if isinstance(klass, dict) and (klass.get("display") or klass.get("code")):
            details.append(f"class: {klass.get('display') or klass.get('code')}")
        reasons = [fhir_code(c)[1] or fhir_code(c)[0] for c in resource.get("reasonCode") or []]
        reasons += [self.reference_name(r, resource) for r in resource.get("reasonReference") or []]
        if any(reasons):
            details.append("reason: " + "; ".join(r for r in reasons if r))
        people = [self.reference_name(p.get("individual"), resource) for p in resource.get("participant") or []
                  if isinstance(p, dict)]
        if any(people):
            details.append("by: " + "; ".join(p for p in people if p))
        places = [self.reference_name(loc.get("location"), resource) for loc in resource.get("location") or []
                  if isinstance(loc, dict)]
        if any(places):
            details.append("at: " + "; ".join(p for p in places if p))
        if resource.get("serviceProvider"):
            provider = self.reference_name(resource["serviceProvider"], resource)
            if provider:
                details.append(f"organization: {provider}")
        hospitalization = resource.get("hospitalization")
        if isinstance(hospitalization, dict) and hospitalization.get("dischargeDisposition"):
            code, name = fhir_code(hospitalization["dischargeDisposition"])
            details.append(f"discharged to: {name or code}")
        code, _ = fhir_code((resource.get("type") or [None])[0])
        kind = _own_extension(resource, MEDALIGN_KIND_EXTENSION)
        return Event(
            event_id=str(resource["id"]), timestamp=start,
            kind=EventKind(kind) if kind in EventKind.__members__ else EventKind.visit,
            source_type=_own_extension(resource, MEDALIGN_SOURCE_TYPE_EXTENSION),
            code=code, name=self.encounter_type(resource),
            value=None, unit=None, text="\n".join(details) or None,
        )

    def our_visit_event(self, resource: dict, start: datetime) -> Event:
        """A visit event our exporter wrote: the last type holds its code and name, extensions the rest."""
        types = resource.get("type") or [None]
        code, name = fhir_code(types[-1])
        stamp = parse_fhir_datetime(_own_extension(resource, _OURS + "event-time", "valueDateTime")) or start
        event = Event(event_id=str(resource["id"]), timestamp=stamp,
                      kind=EventKind(_own_extension(resource, MEDALIGN_KIND_EXTENSION)),
                      source_type=_own_extension(resource, MEDALIGN_SOURCE_TYPE_EXTENSION), code=code, name=name)
        return _apply_our_extensions(event, resource)

    def event(self, resource: dict) -> tuple[Event, dict | None]:
        """The event of one clinical resource and its encounter reference (None when it names none)."""
        kind_name = resource["resourceType"]
        encounter_reference = resource.get("encounter")
        if kind_name == "MedicationAdministration" and encounter_reference is None:
            encounter_reference = resource.get("context")  # R4 names the encounter `context` here
        stamp: datetime | None = None
        code = name = value = unit = text = None
        source_type: str | None = None
        notes = [n.get("text") for n in resource.get("note") or [] if isinstance(n, dict) and n.get("text")]
        if kind_name in ("Condition", "AllergyIntolerance"):
            kind = EventKind.condition
            stamp = self.first_time(resource, "onsetDateTime", "onsetPeriod", "recordedDate", "abatementDateTime")
            code, name = fhir_code(resource.get("code"))
            if kind_name == "AllergyIntolerance":
                source_type = kind_name
                reactions = [fhir_code(m)[1] for r in resource.get("reaction") or [] if isinstance(r, dict)
                             for m in r.get("manifestation") or []]
                if any(reactions):
                    value = "reaction: " + "; ".join(r for r in reactions if r)
        elif kind_name == "Observation":
            categories = {
                coding.get("code") for concept in resource.get("category") or [] if isinstance(concept, dict)
                for coding in concept.get("coding") or [] if isinstance(coding, dict)
            }
            kind = EventKind.measurement if categories & _MEASUREMENT_CATEGORIES else EventKind.observation
            stamp = self.first_time(resource, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
            code, name = fhir_code(resource.get("code"))
            value, unit = _value_x(resource)
            if value is None and resource.get("component"):
                parts = []
                for component in resource["component"]:
                    part_code, part_name = fhir_code(component.get("code"))
                    part_value, part_unit = _value_x(component)
                    if part_value is not None:
                        parts.append(" ".join(x for x in (part_name or part_code, part_value, part_unit) if x))
                value = "; ".join(parts) or None
            if value is None and resource.get("dataAbsentReason"):
                value = "absent: " + (fhir_code(resource["dataAbsentReason"])[1] or "unknown")
        elif kind_name in ("MedicationRequest", "MedicationStatement", "MedicationAdministration", "Immunization"):
            kind = EventKind.drug
            source_type = kind_name
            stamp = self.first_time(resource, "authoredOn", "effectiveDateTime", "effectivePeriod",
                                    "occurrenceDateTime", "dateAsserted", "recorded")
            if kind_name == "Immunization":
                code, name = fhir_code(resource.get("vaccineCode"))
            elif "medicationCodeableConcept" in resource:
                code, name = fhir_code(resource["medicationCodeableConcept"])
            elif "medicationReference" in resource:
                target = self.resolve(resource["medicationReference"], resource)
                code, name = fhir_code(target.get("code")) if target else (None, None)
                name = name or self.reference_name(resource["medicationReference"], resource)
            dosages = resource.get("dosageInstruction") or resource.get("dosage") or []
            if isinstance(dosages, dict):  # MedicationAdministration.dosage is one element
                dosages = [dosages]
            for dosage in dosages:
                if not isinstance(dosage, dict):
                    continue
                dose = dosage.get("dose")
                for rate in dosage.get("doseAndRate") or []:
                    dose = dose or rate.get("doseQuantity")
                if value is None and dose:
                    value, unit = _quantity(dose)
                if value is None and dosage.get("text"):
                    value = dosage["text"]
        elif kind_name == "Procedure":
            kind = EventKind.procedure
            stamp = self.first_time(resource, "performedDateTime", "performedPeriod", "performedString")
            code, name = fhir_code(resource.get("code"))
        elif kind_name == "DiagnosticReport":
            stamp = self.first_time(resource, "effectiveDateTime", "effectivePeriod", "issued")
            code, name = fhir_code(resource.get("code"))
            bodies = [_decode_attachment(form) for form in resource.get("presentedForm") or [] if isinstance(form, dict)]
            bodies = [b for b in bodies if b]
            if bodies:
                kind, text = EventKind.note, "\n\n".join(bodies)
            else:
                kind = EventKind.observation
                value = resource.get("conclusion")
                results = [self.reference_name(r, resource) for r in resource.get("result") or []]
                if results:
                    notes.append("results: " + "; ".join(r for r in results if r))
            source_type = kind_name
        else:  # DocumentReference
            kind = EventKind.note
            context = resource.get("context") if isinstance(resource.get("context"), dict) else {}
            stamp = parse_fhir_datetime(resource.get("date")) or self.period(context.get("period"))[0]
            code, name = fhir_code(resource.get("type"))
            bodies = [_decode_attachment(content.get("attachment") or {}) for content in resource.get("content") or []
                      if isinstance(content, dict)]
            text = "\n\n".join(b for b in bodies if b) or None
            if text is None:
                text = resource.get("description")
            else:
                value = resource.get("description")
            if not text:
                raise _Skip("DocumentReference without inline text skipped")
            # R4 keeps the encounter under context.encounter (a list).
            encounters = context.get("encounter") or []
            if encounters and isinstance(encounters, list):
                encounter_reference = encounters[0]
        if stamp is None:
            raise _Skip(f"{kind_name} without a (parseable) time skipped")
        own_kind = _own_extension(resource, MEDALIGN_KIND_EXTENSION)
        if own_kind in EventKind.__members__:
            kind = EventKind(own_kind)
        if MEDALIGN_KIND_EXTENSION in {e.get("url") for e in resource.get("extension") or [] if isinstance(e, dict)}:
            source_type = _own_extension(resource, MEDALIGN_SOURCE_TYPE_EXTENSION)
        if kind is not EventKind.note and notes:
            text = "\n".join(str(n) for n in notes)
        elif kind is EventKind.note and notes and not text:
            text = "\n".join(str(n) for n in notes)
        event = Event(event_id=str(resource["id"]), timestamp=stamp, kind=kind, source_type=source_type,
                      code=code, name=name, value=value, unit=unit, text=text)
        return _apply_our_extensions(event, resource), encounter_reference

    def first_time(self, resource: dict, *keys: str) -> datetime | None:
        for key in keys:
            if key not in resource:
                continue
            raw = resource[key]
            stamp = self.period(raw)[0] if isinstance(raw, dict) else parse_fhir_datetime(raw)
            if stamp is not None:
                return stamp
        return None


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
