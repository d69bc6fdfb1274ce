"""MIMIC-IV Clinical Database Demo (v2.2) -> one timeline per patient in MedAlign's release layout.

Sources: the demo's gzipped CSV tables (`hosp/`, `icu/`) and, for ICU chart events (vitals, ventilator settings,
scores), which the CSV copy lacks, the "MIMIC-IV demo data in MEDS" event stream (parquet).

Layout of a converted record (one `medalign_ehr_xml/<subject_id>.xml` per patient, the release's folder name;
subject ids are numeric like the release's person ids):

* one encounter per hospital admission (`hadm-<hadm_id>`, admittime..dischtime) holding everything MIMIC links to
  that admission: admission/discharge, transfers and ICU stays (as visit events), diagnoses, procedures, labs,
  prescriptions, microbiology, ICU charting, outputs and inputs;
* one encounter per calendar day for dated facts that belong to no admission (`outpatient-<subject>-<YYYYMMDD>`):
  outpatient labs and microbiology, OMR measurements (weight, blood pressure, BMI), ED visits without admission,
  out-of-hospital death.

Every event id is derived from the source row's key (`lab-<labevent_id>`, `rx-<pharmacy_id>`,
`dx-<hadm_id>-<seq_num>-<icd_code>`, `chart-<stay_id>-<YYYYMMDDHHMM>-<itemid>`, ...), so ids are stable across
runs and gold evidence (FHIR-AgentBench, see `fhir_agentbench.py`) can point at them. Each row also keeps the
FHIR namespace and key from which MIMIC-IV-on-FHIR derives its resource ids (`fhir_ns`, `fhir_key`).

Values that de-identification blanked: in `labevents`, 6,680 of the demo's 107,727 rows read `___` in `value`
while `valuenum` keeps the number; those rows show the number with its unit, reference range and flag. The same
check on the other sources found nothing to recover: `outputevents.value` is never blank (9,362 rows);
`microbiologyevents.dilution_text` is present wherever `dilution_value` is, and its 352 `___` comments have no
numeric twin; the MEDS chart events carry numeric values only (text-valued charting has no value there and is
left out, see `_chart_events`).

Johnson A., Bulgarelli L., Pollard T., Horng S., Celi L. A., Mark R. MIMIC-IV Clinical Database Demo (v2.2).
PhysioNet (2023). Licence ODbL 1.0.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import Demographics, Encounter, Event, EventKind, PatientRecord, check_patient_id

if TYPE_CHECKING:  # pandas is imported lazily: the CLI should start fast when this adapter is not used
    import pandas as pd

__all__ = [
    "ConversionSummary",
    "MimicEvents",
    "convert_mimic_iv_demo",
    "load_mimic_events",
    "build_records",
    "write_mimic_records",
    "load_with_progress",
    "format_chart_value",
    "REQUIRED_TABLES",
    "read_demo_table",
]

# table -> columns we read. A missing file or column is a MedalignError naming it.
REQUIRED_TABLES: dict[str, tuple[str, ...]] = {
    "hosp/patients": ("subject_id", "gender", "anchor_age", "anchor_year", "dod"),
    "hosp/admissions": (
        "subject_id", "hadm_id", "admittime", "dischtime", "deathtime", "admission_type", "admission_location",
        "discharge_location", "insurance", "marital_status", "race",
    ),
    "hosp/transfers": ("subject_id", "hadm_id", "transfer_id", "eventtype", "careunit", "intime", "outtime"),
    "hosp/diagnoses_icd": ("subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"),
    "hosp/procedures_icd": ("subject_id", "hadm_id", "seq_num", "chartdate", "icd_code", "icd_version"),
    "hosp/hcpcsevents": ("subject_id", "hadm_id", "chartdate", "hcpcs_cd", "seq_num", "short_description"),
    "hosp/drgcodes": ("subject_id", "hadm_id", "drg_type", "drg_code", "description"),
    "hosp/labevents": (
        "labevent_id", "subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum", "valueuom",
        "ref_range_lower", "ref_range_upper", "flag", "comments",
    ),
    "hosp/microbiologyevents": (
        "microevent_id", "subject_id", "hadm_id", "micro_specimen_id", "chartdate", "charttime", "spec_type_desc",
        "test_itemid", "test_name", "org_itemid", "org_name", "quantity", "ab_itemid", "ab_name", "dilution_text",
        "interpretation", "comments",
    ),
    "hosp/omr": ("subject_id", "chartdate", "seq_num", "result_name", "result_value"),
    "hosp/pharmacy": ("subject_id", "hadm_id", "pharmacy_id", "starttime", "stoptime", "medication", "route",
                      "frequency", "entertime"),
    "hosp/prescriptions": (
        "subject_id", "hadm_id", "pharmacy_id", "starttime", "stoptime", "drug_type", "drug", "formulary_drug_cd",
        "ndc",
        "dose_val_rx", "dose_unit_rx", "route",
    ),
    "hosp/d_labitems": ("itemid", "label", "fluid"),
    "hosp/d_icd_diagnoses": ("icd_code", "icd_version", "long_title"),
    "hosp/d_icd_procedures": ("icd_code", "icd_version", "long_title"),
    "hosp/d_hcpcs": ("code", "long_description", "short_description"),
    "icu/icustays": ("subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime",
                     "los"),
    "icu/d_items": ("itemid", "label", "linksto", "category", "unitname"),
    "icu/outputevents": ("subject_id", "hadm_id", "stay_id", "charttime", "itemid", "value", "valueuom"),
    "icu/procedureevents": ("subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "value",
                            "valueuom", "orderid"),
    "icu/inputevents": ("subject_id", "hadm_id", "stay_id", "starttime", "endtime", "itemid", "amount",
                        "amountuom", "rate", "rateuom", "orderid", "statusdescription"),
}
MEDS_COLUMNS = ("subject_id", "time", "code", "value")

# Columns of the event table every source is turned into (one row per event).
EVENT_COLUMNS = (
    "subject_id", "hadm_id", "timestamp", "event_id", "kind", "source_type", "code", "name", "value", "unit", "text",
    "table", "fhir_ns", "fhir_key", "fhir_role", "medication_keys",
)
# `fhir_role` is "end" on the event that closes an encounter (hospital discharge, ICU discharge): it shares its
# encounter's FHIR key, so a gold Encounter id resolves to the admission *or* the discharge (see
# fhir_agentbench.py, "Encounter rule"); the legacy rule used the opening event only.
# `medication_keys` holds, for prescription rows, the keys of the FHIR Medication resources the row's
# MedicationRequest points at (the drug, and the mix when the order has several components), joined by
# MEDICATION_KEY_SEPARATOR.
MEDICATION_KEY_SEPARATOR = "\x1f"
MEDICATION_NAMESPACE = "MedicationPrescriptions"  # MIMIC-IV-on-FHIR's namespace for prescription medications

# ICU charting (d_items categories) left out to keep records readable and their size sane (~20% of chart rows):
# monitor alarm limits; line/dressing and fall-risk checkboxes, whose numeric value is a bare 0/1 without the
# text it stands for; care-plan bookkeeping; and "Labs", copies of results the lab system already reports in
# labevents - except finger-stick glucose, which exists only in ICU charting.
_SKIPPED_CHART_CATEGORIES = frozenset(
    {"Alarms", "Access Lines - Invasive", "Access Lines - Peripheral", "Restraint/Support Systems", "Care Plans",
     "OT Notes", "Labs"}
)
_KEPT_CHART_ITEMS = frozenset({"225664"})  # Glucose finger stick (range 70-100)
_KEY_TIME = "%Y-%m-%d %H:%M:%S"  # how MIMIC-IV-on-FHIR writes times inside resource keys
_ID_TIME = "%Y%m%d%H%M"  # how our event ids write times (no spaces or colons)
_MAX_COMMENT_CHARS = 200  # lab/micro comments can be paragraphs; the gist fits in this


@dataclass
class ConversionSummary:
    """What `convert_mimic_iv_demo` wrote and measured."""

    out_dir: Path
    n_patients: int
    n_encounters: int
    n_events: int
    events_by_table: dict[str, int]
    seconds: float
    # Counted with medalign_rag.tokenization.default_counter() on render_record(record, include_ids=False).
    tokens_per_patient: dict[str, int] | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class MimicEvents:
    """Every converted event of the selected patients as one table, plus what records need besides events."""

    events: "pd.DataFrame"  # columns EVENT_COLUMNS
    admissions: "pd.DataFrame"  # subject_id, hadm_id, admittime, dischtime
    patients: "pd.DataFrame"  # subject_id, gender, anchor_age, anchor_year, race
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ reading


def _table_path(src: Path, table: str) -> Path:
    return src / f"{table}.csv.gz"


def _read_table(src: Path, table: str, subject_ids: set[str] | None) -> "pd.DataFrame":
    """Read a demo table as text (keys must keep their source spelling), only the columns we use."""
    import pandas as pd

    path = _table_path(src, table)
    if not path.is_file():
        raise MedalignError(f"MIMIC-IV demo table {table}.csv.gz not found", path=path)
    wanted = REQUIRED_TABLES[table]
    try:
        header = pd.read_csv(path, nrows=0).columns
    except Exception as exc:  # gzip, encoding or CSV damage: name the file
        raise MedalignError(f"cannot read the table: {exc}", path=path) from None
    missing = [column for column in wanted if column not in header]
    if missing:
        raise MedalignError(
            f"missing column(s) {', '.join(missing)} (columns found: {', '.join(header)})", path=path, line=1
        )
    try:
        frame = pd.read_csv(path, usecols=list(wanted), dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise MedalignError(f"cannot read the table: {exc}", path=path) from None
    if subject_ids is not None and "subject_id" in frame.columns:
        frame = frame[frame["subject_id"].isin(subject_ids)].reset_index(drop=True)
    return frame


def read_demo_table(src: Path, table: str, subject_ids: Iterable[str | int] | None = None) -> "pd.DataFrame":
    """One demo table (e.g. "hosp/patients") as text columns, optionally only some subjects' rows."""
    src = Path(src)
    if not src.is_dir():
        raise MedalignError("MIMIC-IV demo folder not found (expected hosp/ and icu/ inside)", path=src)
    if table not in REQUIRED_TABLES:
        raise MedalignError(f"unknown demo table {table!r} (known: {', '.join(REQUIRED_TABLES)})")
    return _read_table(src, table, {str(s) for s in subject_ids} if subject_ids is not None else None)


def _parse_times(frame: "pd.DataFrame", columns: Sequence[str], table: str, src: Path) -> "pd.DataFrame":
    import pandas as pd

    for column in columns:
        try:
            frame[column] = pd.to_datetime(frame[column], format="ISO8601")
        except (ValueError, TypeError) as exc:
            raise MedalignError(f"column {column!r}: bad timestamp ({exc})", path=_table_path(src, table)) from None
    return frame


def _clean(series: "pd.Series") -> "pd.Series":
    """Strip white space; blank becomes missing."""
    stripped = series.astype("string").str.strip()
    return stripped.mask(stripped == "")


def _join(*parts: "pd.Series", sep: str = "; ") -> "pd.Series":
    """Join the present (non-missing) parts row by row; missing when every part is missing."""
    result = None
    for part in parts:
        part = part.astype("string")
        if result is None:
            result = part
            continue
        # NA + text is NA: fall back to whichever side is present.
        result = (result + sep + part).fillna(result).fillna(part)
    return result


def _number_text(series: "pd.Series", digits: int = 2) -> "pd.Series":
    """Numbers rounded for reading ("49.999998807907104" -> "50"); missing stays missing."""
    import pandas as pd

    numbers = pd.to_numeric(series, errors="coerce").round(digits)
    text = numbers.astype(str).str.removesuffix(".0").astype("string")
    return text.mask(numbers.isna())


def _events(
    frame: "pd.DataFrame",
    *,
    table: str,
    kind: EventKind,
    event_id: "pd.Series",
    timestamp: "pd.Series",
    name: "pd.Series | str",
    source_type: str | None = None,
    code: "pd.Series | None" = None,
    value: "pd.Series | None" = None,
    unit: "pd.Series | None" = None,
    text: "pd.Series | None" = None,
    fhir_ns: str | None = None,
    fhir_key: "pd.Series | None" = None,
    fhir_role: str | None = None,
    medication_keys: "pd.Series | None" = None,
) -> "pd.DataFrame":
    """Assemble the event table for one source; absent fields are missing."""
    import pandas as pd

    def column(values) -> pd.Series:
        if values is None:
            return pd.Series(pd.NA, index=frame.index, dtype="string")
        if isinstance(values, str):
            return pd.Series(values, index=frame.index, dtype="string")
        return _clean(values)

    out = pd.DataFrame(
        {
            "subject_id": frame["subject_id"].astype("string"),
            "hadm_id": column(frame.get("hadm_id")),
            "timestamp": timestamp,
            "event_id": event_id.astype("string"),
            "kind": kind.value,
            "source_type": source_type,
            "code": column(code),
            "name": column(name),
            "value": column(value),
            "unit": column(unit),
            "text": column(text),
            "table": table,
            "fhir_ns": fhir_ns,
            "fhir_key": column(fhir_key),
            "fhir_role": fhir_role,
            "medication_keys": column(medication_keys),
        },
        index=frame.index,
    )
    return out[out["timestamp"].notna()]


def _compact_time(stamps: "pd.Series") -> "pd.Series":
    return stamps.dt.strftime(_ID_TIME)


def _key_time(stamps: "pd.Series") -> "pd.Series":
    return stamps.dt.strftime(_KEY_TIME)


def _truncate(series: "pd.Series", limit: int = _MAX_COMMENT_CHARS) -> "pd.Series":
    cleaned = _clean(series)
    too_long = cleaned.str.len() > limit
    return cleaned.mask(too_long.fillna(False), cleaned.str.slice(0, limit - 3) + "...")


def format_chart_value(value: float) -> str:
    """Chart values as MIMIC-IV-on-FHIR writes them into resource keys: whole numbers without decimals.

    The MEDS copy stores values as float32; the shortest float32 repr gives back the source text (98.6, not
    98.59999847).
    """
    import numpy as np

    number = np.float32(value)
    return str(int(number)) if float(number).is_integer() else str(number)


# -------------------------------------------------------------------------------------------- per source


def _admission_events(adm: "pd.DataFrame") -> list["pd.DataFrame"]:
    admitted = _join(
        adm["admission_type"] + " admission",
        "from " + adm["admission_location"],
        "insurance " + adm["insurance"],
        "marital status " + adm["marital_status"],
    )
    died = adm["deathtime"].notna()
    discharge_text = _join(
        ("to " + adm["discharge_location"]).mask(died, "died in hospital"),
        "length of stay " + _number_text((adm["dischtime"] - adm["admittime"]).dt.total_seconds() / 86400) + " days",
    )
    return [
        _events(
            adm, table="admissions", kind=EventKind.visit, event_id="adm-" + adm["hadm_id"],
            timestamp=adm["admittime"], name="Hospital admission", text=admitted,
            fhir_ns="Encounter", fhir_key=adm["hadm_id"],
        ),
        _events(
            adm, table="admissions", kind=EventKind.visit, event_id="dis-" + adm["hadm_id"],
            timestamp=adm["dischtime"], name="Hospital discharge", text=discharge_text,
            fhir_ns="Encounter", fhir_key=adm["hadm_id"], fhir_role="end",
        ),
    ]


_TRANSFER_NAMES = {
    "admit": "Admitted to care unit",
    "transfer": "Transferred to care unit",
    "ED": "Emergency department",
}


def _transfer_events(transfers: "pd.DataFrame") -> "pd.DataFrame":
    # Discharge rows carry no care unit; the admission's discharge event says the same.
    rows = transfers[transfers["eventtype"] != "discharge"]
    return _events(
        rows, table="transfers", kind=EventKind.visit, source_type="visit_detail",
        event_id="xfer-" + rows["transfer_id"], timestamp=rows["intime"],
        name=rows["eventtype"].map(_TRANSFER_NAMES).fillna(rows["eventtype"]), value=rows["careunit"],
        fhir_ns="Location", fhir_key=rows["careunit"],
    )


def _icu_events(stays: "pd.DataFrame") -> list["pd.DataFrame"]:
    los = _number_text(stays["los"])
    stay_text = _join(
        stays["first_careunit"],
        "until " + _key_time(stays["outtime"]),
        "length of stay " + los + " days",
    )
    return [
        _events(
            stays, table="icustays", kind=EventKind.visit, source_type="visit_detail",
            event_id="icu-" + stays["stay_id"], timestamp=stays["intime"], name="ICU stay", text=stay_text,
            fhir_ns="EncounterICU", fhir_key=stays["stay_id"],
        ),
        _events(
            stays, table="icustays", kind=EventKind.visit, source_type="visit_detail",
            event_id="icu-out-" + stays["stay_id"], timestamp=stays["outtime"], name="ICU discharge",
            value=stays["last_careunit"], fhir_ns="EncounterICU", fhir_key=stays["stay_id"], fhir_role="end",
        ),
    ]


def _icd_titles(dictionary: "pd.DataFrame") -> dict[tuple[str, str], str]:
    return dict(zip(zip(dictionary["icd_code"].str.strip(), dictionary["icd_version"]), dictionary["long_title"]))


def _icd_names(rows: "pd.DataFrame", titles: dict[tuple[str, str], str]) -> "pd.Series":
    import pandas as pd

    keys = list(zip(rows["icd_code"].str.strip(), rows["icd_version"]))
    return pd.Series([titles.get(key) for key in keys], index=rows.index, dtype="string")


def _diagnosis_events(dx: "pd.DataFrame", adm: "pd.DataFrame", titles: dict) -> "pd.DataFrame":
    # diagnoses_icd has no time. EHRSQL, whose question templates FHIR-AgentBench reuses, dates a diagnosis at
    # its admission's start ("assume charttime is at the hospital admission"); doing the same keeps time-filtered
    # questions ("diagnosed ... since 2133") answerable the way the benchmark's answers were computed.
    admitted = dx["hadm_id"].map(dict(zip(adm["hadm_id"], adm["admittime"])))
    icd = dx["icd_code"].str.strip()
    key = dx["hadm_id"] + "-" + dx["seq_num"] + "-" + icd
    return _events(
        dx, table="diagnoses_icd", kind=EventKind.condition, event_id="dx-" + key, timestamp=admitted,
        code="ICD" + dx["icd_version"] + "CM/" + icd, name=_icd_names(dx, titles),
        fhir_ns="Condition", fhir_key=key,
    )


def _procedure_events(px: "pd.DataFrame", titles: dict) -> "pd.DataFrame":
    icd = px["icd_code"].str.strip()
    key = px["hadm_id"] + "-" + px["seq_num"] + "-" + icd
    vocabulary = px["icd_version"].map({"9": "ICD9Proc", "10": "ICD10PCS"}).fillna("ICD" + px["icd_version"])
    return _events(
        px, table="procedures_icd", kind=EventKind.procedure, event_id="px-" + key, timestamp=px["chartdate"],
        code=vocabulary + "/" + icd, name=_icd_names(px, titles), fhir_ns="Procedure", fhir_key=key,
    )


def _hcpcs_events(rows: "pd.DataFrame", d_hcpcs: "pd.DataFrame") -> "pd.DataFrame":
    code = rows["hcpcs_cd"].str.strip()
    described = d_hcpcs.assign(code=d_hcpcs["code"].str.strip())
    long_names = dict(zip(described["code"], described["long_description"]))
    name = code.map(long_names).fillna(rows["short_description"])
    return _events(
        rows, table="hcpcsevents", kind=EventKind.procedure,
        event_id="hcpcs-" + rows["hadm_id"] + "-" + rows["seq_num"], timestamp=rows["chartdate"],
        code="HCPCS/" + code, name=name,
    )


def _drg_events(rows: "pd.DataFrame", adm: "pd.DataFrame") -> "pd.DataFrame":
    discharge = rows["hadm_id"].map(dict(zip(adm["hadm_id"], adm["dischtime"])))
    return _events(
        rows, table="drgcodes", kind=EventKind.observation,
        event_id="drg-" + rows["hadm_id"] + "-" + rows["drg_type"] + "-" + rows["drg_code"],
        timestamp=discharge, code="DRG-" + rows["drg_type"] + "/" + rows["drg_code"],
        name="Diagnosis related group", value=rows["description"],
    )


def _lab_events(labs: "pd.DataFrame", d_labitems: "pd.DataFrame") -> "pd.DataFrame":
    # Most labs are on blood; naming the fluid only when it is not blood keeps "Glucose" apart from
    # "Glucose (Urine)" without spending tokens on every row.
    fluid = d_labitems["fluid"].where(d_labitems["fluid"].str.lower() != "blood")
    label = d_labitems["label"].where(fluid.isna(), d_labitems["label"] + " (" + fluid + ")")
    names = labs["itemid"].map(dict(zip(d_labitems["itemid"], label)))
    # The text `value` is the result as reported; de-identification replaced it by "___" in about 6% of rows
    # while `valuenum` kept the number (a glucose of 115 read "___"). Then the number is the value, and the
    # reference range and flag go with it, since the text that would have said "high" is gone too. Ranges and
    # flags are left out elsewhere to keep records small (MedAlign's own records carry neither). Comments stand
    # in when there is no number either ("HEMOLYZED").
    reported = _clean(labs["value"])
    redacted = reported.isna() | reported.str.fullmatch(r"_+").fillna(False)
    number = _number_text(labs["valuenum"], digits=4)
    recovered = redacted & number.notna()
    value = reported.mask(redacted).fillna(number.where(recovered)).fillna(_truncate(labs["comments"]))
    lower, upper = _number_text(labs["ref_range_lower"], 4), _number_text(labs["ref_range_upper"], 4)
    context = _join("reference range " + lower + "-" + upper, _clean(labs["flag"]))
    return _events(
        labs, table="labevents", kind=EventKind.measurement, event_id="lab-" + labs["labevent_id"],
        timestamp=labs["charttime"], name=names.fillna("lab item " + labs["itemid"]),
        value=value, unit=labs["valueuom"], text=context.where(recovered),
        fhir_ns="ObservationLabevents", fhir_key=labs["labevent_id"],
    )


def _micro_events(micro: "pd.DataFrame") -> list["pd.DataFrame"]:
    micro = micro.assign(when=micro["charttime"].fillna(micro["chartdate"]))
    test_key = micro["micro_specimen_id"] + "-" + micro["test_itemid"]
    has_org = micro["org_itemid"].notna()

    # A test is one (specimen, test) pair; its rows differ by organism and antibiotic.
    tests = micro.assign(test_key=test_key, has_org=has_org).sort_values("microevent_id", key=lambda s: s.astype(int))
    growth = tests.groupby("test_key")["has_org"].transform("any")
    tests = tests.assign(growth=growth).drop_duplicates("test_key")
    test_text = _join(
        ("specimen " + tests["spec_type_desc"]),
        tests["growth"].map({True: "organism(s) found", False: "no organism found"}).astype("string"),
        _truncate(tests["comments"]),
    )
    test_events = _events(
        tests, table="microbiologyevents", kind=EventKind.measurement, event_id="microtest-" + tests["test_key"],
        timestamp=tests["when"], name="Microbiology test: " + tests["test_name"], text=test_text,
        fhir_ns="ObservationMicroTest", fhir_key=tests["test_key"],
    )

    orgs = micro[has_org].assign(
        org_key=micro["test_itemid"] + "-" + micro["micro_specimen_id"] + "-" + micro["org_itemid"]
    ).drop_duplicates("org_key")
    org_events = _events(
        orgs, table="microbiologyevents", kind=EventKind.measurement,
        event_id="microorg-" + orgs["micro_specimen_id"] + "-" + orgs["test_itemid"] + "-" + orgs["org_itemid"],
        timestamp=orgs["when"], name="Organism in " + orgs["test_name"] + " (" + orgs["spec_type_desc"] + ")",
        value=orgs["org_name"], text="quantity " + orgs["quantity"],
        fhir_ns="ObservationMicroOrg", fhir_key=orgs["org_key"],
    )

    susceptibility = micro[micro["ab_itemid"].notna()]
    susc_events = _events(
        susceptibility, table="microbiologyevents", kind=EventKind.measurement,
        event_id="microsusc-" + susceptibility["microevent_id"], timestamp=susceptibility["when"],
        name=susceptibility["org_name"] + " susceptibility to " + susceptibility["ab_name"],
        value=susceptibility["interpretation"],
        text="MIC " + susceptibility["dilution_text"],
        fhir_ns="ObservationMicroSusc", fhir_key=susceptibility["microevent_id"],
    )
    return [test_events, org_events, susc_events]


def _slug(series: "pd.Series") -> "pd.Series":
    return series.str.lower().str.replace(r"[^a-z0-9]+", "-", regex=True).str.strip("-")


def _omr_events(omr: "pd.DataFrame") -> "pd.DataFrame":
    event_id = (
        "omr-" + omr["subject_id"] + "-" + omr["chartdate"].dt.strftime("%Y%m%d") + "-" + omr["seq_num"] + "-"
        + _slug(omr["result_name"])
    )
    unit = omr["result_name"].str.extract(r"\(([^)]+)\)\s*$", expand=False)
    name = omr["result_name"].str.replace(r"\s*\([^)]+\)\s*$", "", regex=True)
    return _events(
        omr.assign(hadm_id=None), table="omr", kind=EventKind.measurement, event_id=event_id,
        timestamp=omr["chartdate"], name=name, value=omr["result_value"], unit=unit,
    )


def _medication_keys(rx: "pd.DataFrame") -> "pd.Series":
    """Keys of the FHIR Medication resources each prescription row's MedicationRequest points at.

    MIMIC-IV-on-FHIR makes one Medication per distinct (drug, formulary_drug_cd, ndc), keyed
    "drug--formulary_drug_cd--ndc" (absent parts and their "--" left out; an ndc of 0 counts as absent), and for
    an order with several components a mix keyed by its components' keys joined with "_" in (drug_type
    descending, drug) order. Checked on the dev questions: every Medication id resolves this way.
    """
    drug_key = rx["drug"].fillna("")
    formulary = rx["formulary_drug_cd"].fillna("")
    ndc = rx["ndc"].fillna("")
    drug_key = drug_key + ("--" + formulary).where(formulary != "", "") + ("--" + ndc).where(
        ~ndc.isin(["", "0"]), "")
    ordered = rx.assign(drug_key=drug_key, drug_sort=rx["drug"].fillna("")).sort_values(
        ["pharmacy_id", "drug_type", "drug_sort"], ascending=[True, False, True], kind="stable")
    components = ordered.groupby("pharmacy_id")["drug_key"].agg(list)
    mix_key = components.map(lambda keys: "_".join(keys) if len(keys) > 1 else "")
    mixes = rx["pharmacy_id"].map(mix_key).fillna("")
    return drug_key + (MEDICATION_KEY_SEPARATOR + mixes).where(mixes != "", "")


def _medication_events(rx: "pd.DataFrame", pharmacy: "pd.DataFrame") -> list["pd.DataFrame"]:
    frequency = dict(zip(pharmacy["pharmacy_id"], pharmacy["frequency"]))
    # One pharmacy order can list several components (the drug and its diluent bag); the main drug gets
    # rx-<pharmacy_id>, further components rx-<pharmacy_id>-2, -3 ... in source order.
    rx = rx.assign(
        main_first=(rx["drug_type"] != "MAIN").astype(int), source_order=range(len(rx))
    ).sort_values(["pharmacy_id", "main_first", "source_order"])
    component = rx.groupby("pharmacy_id").cumcount() + 1
    first_id = "rx-" + rx["pharmacy_id"]
    event_id = first_id.where(component == 1, first_id + "-" + component.astype(str))
    starts = rx["starttime"].fillna(rx["pharmacy_id"].map(dict(zip(pharmacy["pharmacy_id"], pharmacy["entertime"]))))
    ndc = rx["ndc"].where(~rx["ndc"].isin(["0", "0.0"]))
    # Dose and unit are the event's value and unit; the body says how and how long.
    text = _join(
        rx["route"],
        rx["pharmacy_id"].map(frequency),
        "until " + _key_time(rx["stoptime"]),
    )
    prescribed = _events(
        rx, table="prescriptions", kind=EventKind.drug, event_id=event_id, timestamp=starts,
        code="NDC/" + ndc, name=rx["drug"], value=rx["dose_val_rx"], unit=rx["dose_unit_rx"], text=text,
        fhir_ns="MedicationRequest", fhir_key=rx["pharmacy_id"], medication_keys=_medication_keys(rx),
    )
    # Pharmacy orders with no prescription row (a few dozen) still say a drug was ordered.
    orphans = pharmacy[~pharmacy["pharmacy_id"].isin(set(rx["pharmacy_id"]))]
    orphan_events = _events(
        orphans, table="pharmacy", kind=EventKind.drug, event_id="rx-" + orphans["pharmacy_id"],
        timestamp=orphans["starttime"].fillna(orphans["entertime"]), name=orphans["medication"],
        text=_join(orphans["route"], orphans["frequency"], "until " + _key_time(orphans["stoptime"])),
        fhir_ns="MedicationRequest", fhir_key=orphans["pharmacy_id"],
    )
    return [prescribed, orphan_events]


def _item_labels(d_items: "pd.DataFrame") -> dict[str, str]:
    return dict(zip(d_items["itemid"], d_items["label"]))


def _output_events(out: "pd.DataFrame", labels: dict[str, str]) -> "pd.DataFrame":
    key = out["stay_id"] + "-" + _key_time(out["charttime"]) + "-" + out["itemid"]
    return _events(
        out, table="outputevents", kind=EventKind.measurement,
        event_id="out-" + out["stay_id"] + "-" + _compact_time(out["charttime"]) + "-" + out["itemid"],
        timestamp=out["charttime"], name=out["itemid"].map(labels).fillna("output item " + out["itemid"]),
        value=out["value"], unit=out["valueuom"], fhir_ns="ObservationOutputevents", fhir_key=key,
    )


def _icu_procedure_events(rows: "pd.DataFrame", labels: dict[str, str]) -> "pd.DataFrame":
    return _events(
        rows, table="procedureevents", kind=EventKind.procedure,
        event_id="icuproc-" + rows["stay_id"] + "-" + rows["orderid"], timestamp=rows["starttime"],
        name=rows["itemid"].map(labels).fillna("procedure item " + rows["itemid"]),
        value=_number_text(rows["value"]), unit=rows["valueuom"].mask(rows["valueuom"] == "None"),
        text="until " + _key_time(rows["endtime"]),
        fhir_ns="ProcedureICU", fhir_key=rows["orderid"],
    )


def _input_events(rows: "pd.DataFrame", labels: dict[str, str]) -> "pd.DataFrame":
    # Rewritten orders repeat the same drip; only what was given (not "Rewritten" rows) is kept.
    rows = rows[rows["statusdescription"] != "Rewritten"]
    rate = _number_text(rows["rate"])
    return _events(
        rows, table="inputevents", kind=EventKind.drug, source_type="drug_exposure",
        event_id="input-" + rows["stay_id"] + "-" + rows["orderid"] + "-" + rows["itemid"],
        timestamp=rows["starttime"], name=rows["itemid"].map(labels).fillna("input item " + rows["itemid"]),
        value=_number_text(rows["amount"]), unit=rows["amountuom"],
        text=_join("rate " + rate + " " + rows["rateuom"].fillna(""), "until " + _key_time(rows["endtime"])),
    )


def _assign_stays(chart: "pd.DataFrame", stays: "pd.DataFrame") -> "pd.DataFrame":
    """Give each chart row the subject's ICU stay that contains it, else the nearest one.

    Some charting is timed minutes before `intime` or after `outtime`; MIMIC-IV-on-FHIR still files it under a
    stay (its resource keys prove it), so the nearest stay is the right one.
    """
    import numpy as np

    pairs = chart.reset_index(names="row").merge(
        stays[["subject_id", "stay_id", "hadm_id", "intime", "outtime"]], on="subject_id", how="inner"
    )
    before = (pairs["intime"] - pairs["time"]).dt.total_seconds().clip(lower=0)
    after = (pairs["time"] - pairs["outtime"]).dt.total_seconds().clip(lower=0)
    pairs["distance"] = np.maximum(before, after)
    best = pairs.sort_values(["row", "distance", "stay_id"]).drop_duplicates("row")
    return best.drop(columns=["row", "distance", "intime", "outtime"])


def _chart_events(
    meds_path: Path, d_items: "pd.DataFrame", stays: "pd.DataFrame", subject_ids: set[str] | None
) -> tuple["pd.DataFrame", list[str]]:
    import pandas as pd
    import pyarrow.parquet as pq

    if not meds_path.is_file():
        raise MedalignError("MEDS event file not found", path=meds_path)
    try:
        schema_names = pq.read_schema(meds_path).names
    except Exception as exc:
        raise MedalignError(f"cannot read the parquet file: {exc}", path=meds_path) from None
    missing = [c for c in MEDS_COLUMNS if c not in schema_names]
    if missing:
        raise MedalignError(f"missing column(s) {', '.join(missing)} (columns found: {', '.join(schema_names)})",
                            path=meds_path)
    filters = [("subject_id", "in", [int(s) for s in subject_ids])] if subject_ids is not None else None
    meds = pd.read_parquet(meds_path, columns=list(MEDS_COLUMNS), filters=filters)
    # Text-valued charting (rhythm, assessments) has no value in the MEDS copy; without it the row says nothing.
    meds = meds[meds["value"].notna() & meds["code"].str.startswith("LAB//")]
    parts = meds["code"].str.split("//", n=2, expand=True)
    chart_items = d_items[d_items["linksto"] == "chartevents"]
    kept_items = chart_items[
        ~chart_items["category"].isin(_SKIPPED_CHART_CATEGORIES) | chart_items["itemid"].isin(_KEPT_CHART_ITEMS)
    ]
    meds = meds.assign(itemid=parts[1], unit=parts[2] if parts.shape[1] > 2 else None)
    n_chart = int(meds["itemid"].isin(set(chart_items["itemid"])).sum())
    meds = meds[meds["itemid"].isin(set(kept_items["itemid"]))]
    meds = meds.assign(subject_id=meds["subject_id"].astype(str))
    meds = meds.drop_duplicates(["subject_id", "time", "itemid", "value"])
    chart = _assign_stays(meds, stays)
    notes = [
        f"chart events: {n_chart} numeric rows in the MEDS file, {len(meds)} kept after dropping alarm limits, "
        f"checkbox rows, lab copies and exact duplicates; {len(chart)} placed in an ICU stay"
    ]
    value_text = chart["value"].map(format_chart_value)
    key = chart["stay_id"] + "-" + _key_time(chart["time"]) + "-" + chart["itemid"] + "-" + value_text
    # "UNK" in the MEDS code means the source row had no unit; the item's dictionary unit is the next best.
    item_units = chart_items.set_index("itemid")["unitname"]
    item_units = item_units[item_units.notna() & (item_units != "None")]
    unit = chart["unit"].where(chart["unit"] != "UNK", chart["itemid"].map(item_units))
    events = _events(
        chart, table="chartevents", kind=EventKind.measurement,
        event_id="chart-" + chart["stay_id"] + "-" + _compact_time(chart["time"]) + "-" + chart["itemid"],
        timestamp=chart["time"], name=chart["itemid"].map(_item_labels(d_items)), value=value_text, unit=unit,
        fhir_ns="ObservationChartevents", fhir_key=key,
    )
    return events, notes


def _demographic_events(patients: "pd.DataFrame", events: "pd.DataFrame") -> "pd.DataFrame":
    """One "Patient demographics" event per patient: gender and age at MIMIC's anchor year.

    It is dated at the patient's first recorded event (and filed in that event's admission, if any), so that
    a question's time anchor never hides it; gold FHIR Patient ids resolve to it. The date of death is not in
    it (that would reveal the future at the record's start): the death event (out-of-hospital death) or the
    discharge event (in-hospital death) says it at its time.
    """
    first = events.sort_values(["subject_id", "timestamp"], kind="stable").drop_duplicates("subject_id")
    first = first.set_index("subject_id")
    rows = patients[patients["subject_id"].isin(first.index)]
    gender = rows["gender"].map({"F": "Female", "M": "Male"}).fillna(rows["gender"])
    text = _join("gender " + gender, "age " + rows["anchor_age"] + " in " + rows["anchor_year"])
    return _events(
        rows.assign(hadm_id=rows["subject_id"].map(first["hadm_id"])), table="patients",
        kind=EventKind.observation, event_id="patient-" + rows["subject_id"],
        timestamp=rows["subject_id"].map(first["timestamp"]), name="Patient demographics", text=text,
        fhir_ns="Patient", fhir_key=rows["subject_id"],
    )


def _death_events(patients: "pd.DataFrame", adm: "pd.DataFrame") -> "pd.DataFrame":
    # In-hospital deaths are already said by the discharge event; dod adds deaths after discharge.
    died_in_hospital = set(adm.loc[adm["deathtime"].notna(), "subject_id"])
    rows = patients[patients["dod"].notna() & ~patients["subject_id"].isin(died_in_hospital)]
    return _events(
        rows.assign(hadm_id=None), table="patients", kind=EventKind.observation,
        event_id="death-" + rows["subject_id"], timestamp=rows["dod"], name="Death", value="deceased",
    )


# ------------------------------------------------------------------------------------------------ assembly


def load_mimic_events(
    src: Path,
    meds: Path | None,
    *,
    subject_ids: Iterable[str | int] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> MimicEvents:
    """Read the demo tables (and the MEDS chart events when `meds` is given) into one event table."""
    import pandas as pd

    src = Path(src)
    if not src.is_dir():
        raise MedalignError("MIMIC-IV demo folder not found (expected hosp/ and icu/ inside)", path=src)
    # Fail before reading anything when an input is missing.
    for table in REQUIRED_TABLES:
        if not _table_path(src, table).is_file():
            raise MedalignError(f"MIMIC-IV demo table {table}.csv.gz not found", path=_table_path(src, table))
    if meds is not None and not Path(meds).is_file():
        raise MedalignError("MEDS event file not found", path=meds)
    wanted = {str(s) for s in subject_ids} if subject_ids is not None else None
    step = on_step or (lambda _label: None)

    def read(table: str, times: Sequence[str] = ()) -> pd.DataFrame:
        step(f"reading {table}")
        return _parse_times(_read_table(src, table, wanted), times, table, src)

    patients = read("hosp/patients", ["dod"])
    if wanted is not None:
        unknown = wanted - set(patients["subject_id"])
        if unknown:
            raise MedalignError(
                f"subject id(s) not in the demo: {', '.join(sorted(unknown))}", path=_table_path(src, "hosp/patients")
            )
    adm = read("hosp/admissions", ["admittime", "dischtime", "deathtime"])
    stays = read("icu/icustays", ["intime", "outtime"])
    d_items = read("icu/d_items")
    dx_titles = _icd_titles(read("hosp/d_icd_diagnoses"))
    px_titles = _icd_titles(read("hosp/d_icd_procedures"))
    labels = _item_labels(d_items)

    parts: list[pd.DataFrame] = []
    parts += _admission_events(adm)
    parts.append(_transfer_events(read("hosp/transfers", ["intime", "outtime"])))
    parts += _icu_events(stays)
    parts.append(_diagnosis_events(read("hosp/diagnoses_icd"), adm, dx_titles))
    parts.append(_procedure_events(read("hosp/procedures_icd", ["chartdate"]), px_titles))
    parts.append(_hcpcs_events(read("hosp/hcpcsevents", ["chartdate"]), read("hosp/d_hcpcs")))
    parts.append(_drg_events(read("hosp/drgcodes"), adm))
    parts.append(_lab_events(read("hosp/labevents", ["charttime"]), read("hosp/d_labitems")))
    parts += _micro_events(read("hosp/microbiologyevents", ["chartdate", "charttime"]))
    parts.append(_omr_events(read("hosp/omr", ["chartdate"])))
    parts += _medication_events(
        read("hosp/prescriptions", ["starttime", "stoptime"]),
        read("hosp/pharmacy", ["starttime", "stoptime", "entertime"]),
    )
    parts.append(_output_events(read("icu/outputevents", ["charttime"]), labels))
    parts.append(_icu_procedure_events(read("icu/procedureevents", ["starttime", "endtime"]), labels))
    parts.append(_input_events(read("icu/inputevents", ["starttime", "endtime"]), labels))
    parts.append(_death_events(patients, adm))
    notes: list[str] = []
    if meds is not None:
        step("reading MEDS chart events")
        chart, chart_notes = _chart_events(Path(meds), d_items, stays, wanted)
        parts.append(chart)
        notes += chart_notes
    else:
        notes.append("no MEDS file given: ICU chart events (vitals) are left out")

    step("assembling events")
    events = pd.concat([p.astype({"timestamp": "datetime64[us]"}) for p in parts if len(p)], ignore_index=True)
    demographics = _demographic_events(patients, events).astype({"timestamp": "datetime64[us]"})
    events = pd.concat([events, demographics], ignore_index=True)
    events = _dedupe_ids(events)
    race = adm.sort_values("admittime").groupby("subject_id")["race"].last()
    patients = patients.assign(race=patients["subject_id"].map(race))
    return MimicEvents(events=events, admissions=adm[["subject_id", "hadm_id", "admittime", "dischtime"]],
                       patients=patients, notes=notes)


def _dedupe_ids(events: "pd.DataFrame") -> "pd.DataFrame":
    """Ids must be unique within a record; a repeated source key gets -2, -3 ... (deterministic order)."""
    events = events.sort_values(["subject_id", "event_id", "timestamp", "name", "value"], kind="stable",
                                ignore_index=True)
    repeat = events.groupby(["subject_id", "event_id"]).cumcount()
    events["event_id"] = events["event_id"].where(repeat == 0, events["event_id"] + "-" + (repeat + 1).astype(str))
    return events


_TABLE_ORDER = {
    name: rank
    for rank, name in enumerate(
        ["admissions", "transfers", "icustays", "patients", "diagnoses_icd", "drgcodes", "procedures_icd",
         "hcpcsevents", "procedureevents", "prescriptions", "pharmacy", "inputevents", "labevents",
         "microbiologyevents", "omr", "chartevents", "outputevents"]
    )
}


def _assign_encounters(events: "pd.DataFrame", admissions: "pd.DataFrame") -> "pd.DataFrame":
    known = set(admissions["hadm_id"])
    in_admission = events["hadm_id"].isin(known)
    day = events["timestamp"].dt.strftime("%Y%m%d")
    return events.assign(
        encounter_id=("hadm-" + events["hadm_id"]).where(
            in_admission, "outpatient-" + events["subject_id"] + "-" + day
        ),
        table_rank=events["table"].map(_TABLE_ORDER).fillna(len(_TABLE_ORDER)),
        # Ids of one table share a prefix; shorter-first then text order puts lab-2 before lab-10.
        id_length=events["event_id"].str.len(),
    )


def _none_if_missing(value):
    import pandas as pd

    return None if value is None or pd.isna(value) else str(value)


def _plain(series: "pd.Series") -> list:
    """Column as Python values with None for missing (iterating Arrow-backed columns row by row is slow)."""
    return series.astype(object).where(series.notna(), None).tolist()


def build_records(data: MimicEvents) -> Iterator[PatientRecord]:
    """One PatientRecord per patient (subject id order); encounters by start, events by time."""
    import pandas as pd

    events = _assign_encounters(data.events, data.admissions)
    events = events.sort_values(
        ["subject_id", "encounter_id", "timestamp", "table_rank", "id_length", "event_id"], kind="stable",
        ignore_index=True,
    )
    admission_times = {
        hadm: (admit.to_pydatetime(), None if pd.isna(discharge) else discharge.to_pydatetime())
        for hadm, admit, discharge in zip(data.admissions["hadm_id"], data.admissions["admittime"],
                                          data.admissions["dischtime"])
    }
    people = {row["subject_id"]: row for row in data.patients.to_dict("records")}
    columns = {name: _plain(events[name]) for name in
               ("subject_id", "encounter_id", "event_id", "kind", "source_type", "code", "name", "value", "unit",
                "text")}
    stamps = list(events["timestamp"].dt.to_pydatetime())
    rows = range(len(events))

    for subject_id, subject_rows in groupby(rows, key=columns["subject_id"].__getitem__):
        person = people[subject_id]
        birth_year = int(person["anchor_year"]) - int(person["anchor_age"])
        gender = _none_if_missing(person["gender"])
        record = PatientRecord(
            patient_id=check_patient_id(str(subject_id)),
            demographics=Demographics(
                # MIMIC gives age only at a per-patient anchor year; Jan 1 is the convention MEDS uses too.
                birthdate=datetime(birth_year, 1, 1),
                gender={"F": "Female", "M": "Male"}.get(gender or "", gender),
                race=_none_if_missing(person.get("race")),
            ),
        )
        for encounter_id, encounter_rows in groupby(subject_rows, key=columns["encounter_id"].__getitem__):
            indices = list(encounter_rows)
            encounter_events = [
                Event(
                    event_id=columns["event_id"][i], timestamp=stamps[i], kind=EventKind(columns["kind"][i]),
                    source_type=columns["source_type"][i], code=columns["code"][i], name=columns["name"][i],
                    value=columns["value"][i], unit=columns["unit"][i], text=columns["text"][i],
                )
                for i in indices
            ]
            if encounter_id.startswith("hadm-"):
                start, end = admission_times[encounter_id.removeprefix("hadm-")]
                kind = "inpatient"
            else:
                start, end, kind = encounter_events[0].timestamp, encounter_events[-1].timestamp, "outpatient"
            record.encounters.append(
                Encounter(encounter_id=encounter_id, type=kind, start=start, end=end, events=encounter_events)
            )
        record.encounters.sort(key=lambda enc: (enc.start, enc.encounter_id))
        yield record


def _progress_context(progress: bool):
    if not progress:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def write_mimic_records(
    data: MimicEvents, out: Path, *, progress: bool = False, count_tokens: bool = False, started: float | None = None
) -> ConversionSummary:
    """Write `out/medalign_ehr_xml/<subject_id>.xml` for every patient in `data`."""
    from medalign_rag.records.serialize import render_record, write_release_xml
    from medalign_rag.records.sources.medalign_xml import release_records_dir

    started = time.perf_counter() if started is None else started
    out = Path(out)
    records_dir = release_records_dir(out)
    counter = None
    if count_tokens:
        from medalign_rag.tokenization import default_counter

        counter = default_counter()
    n_patients = int(data.events["subject_id"].nunique())
    n_encounters = n_events = 0
    tokens: dict[str, int] = {}
    with _progress_context(progress) as bar:
        task = bar.add_task("writing records", total=n_patients) if bar is not None else None
        for record in build_records(data):
            write_release_xml(record, records_dir / f"{record.patient_id}.xml")
            n_encounters += len(record.encounters)
            n_events += record.n_events
            if counter is not None:
                tokens[record.patient_id] = counter.count(render_record(record, include_ids=False))
            if bar is not None:
                bar.advance(task)
    by_table = {str(k): int(v) for k, v in data.events["table"].value_counts().sort_index().items()}
    return ConversionSummary(
        out_dir=out, n_patients=n_patients, n_encounters=n_encounters, n_events=n_events,
        events_by_table=by_table, seconds=time.perf_counter() - started,
        tokens_per_patient=tokens or None, notes=list(data.notes),
    )


# The demo's own dictionaries: copied beside the records, they give retrieval the source's item names and
# abbreviations (records/source_vocabulary.py reads a `vocabulary/` folder beside the records).
DICTIONARY_TABLES = ("hosp/d_labitems", "icu/d_items")


def copy_dictionaries(src: Path, out: Path) -> list[Path]:
    """Copy the demo's item dictionaries (d_labitems, d_items) to `out/vocabulary/`, atomically; returns the copies."""
    from medalign_rag.atomic import atomic_write_bytes
    from medalign_rag.records.source_vocabulary import VOCABULARY_DIRNAME

    copies: list[Path] = []
    for table in DICTIONARY_TABLES:
        folder, stem = table.split("/")
        found = sorted((Path(src) / folder).glob(f"{stem}.csv*"))
        if not found:
            continue  # an optional extra: conversion does not need it
        target = Path(out) / VOCABULARY_DIRNAME / found[0].name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, found[0].read_bytes())
        copies.append(target)
    return copies


def load_with_progress(
    src: Path, meds: Path | None, *, progress: bool, subject_ids: Iterable[str | int] | None = None
) -> MimicEvents:
    """`load_mimic_events` with a spinner naming the table being read."""
    with _progress_context(progress) as bar:
        task = bar.add_task("reading MIMIC-IV demo tables", total=None) if bar is not None else None

        def on_step(label: str) -> None:
            if bar is not None:
                bar.update(task, description=label)

        data = load_mimic_events(Path(src), Path(meds) if meds is not None else None, subject_ids=subject_ids,
                                 on_step=on_step)
        if bar is not None:
            bar.update(task, description="read MIMIC-IV demo tables", total=1, completed=1)
    return data


def convert_mimic_iv_demo(
    src: Path,
    meds: Path | None,
    out: Path,
    progress: bool = False,
    *,
    subject_ids: Iterable[str | int] | None = None,
    count_tokens: bool = False,
) -> ConversionSummary:
    """Write `out/medalign_ehr_xml/<subject_id>.xml` for every demo patient (or those in `subject_ids`), and the
    demo's item dictionaries to `out/vocabulary/` (the names and abbreviations retrieval reads).

    `src` is the demo folder (holding hosp/ and icu/), `meds` the MEDS parquet with ICU chart events (None leaves
    them out). With `count_tokens`, each record's size is measured in tokens of the default counter.
    """
    started = time.perf_counter()
    data = load_with_progress(src, meds, progress=progress, subject_ids=subject_ids)
    summary = write_mimic_records(data, out, progress=progress, count_tokens=count_tokens, started=started)
    copy_dictionaries(src, out)
    return summary
