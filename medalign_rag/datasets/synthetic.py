"""A deterministic synthetic cohort in MedAlign's release layout: the project's built-in default data.

Real MedAlign records are access-controlled, so the pipeline needs data it can ship. This module simulates
patients whose records look like the release (years of office, lab-only, emergency and inpatient encounters
with ICD-10-CM conditions, LOINC labs and vitals, RxNorm prescriptions, CPT-4 procedures and free-text notes)
and writes clinician-style instructions whose gold answers and gold evidence event ids are computed from the
written record itself.

Two properties matter for the benchmark and are designed in:

* record lengths spread like the release's (a few short records, most long, some beyond 80k tokens), so that a
  2k-32k context really has to cut records;
* the gold evidence sits at varied depths: many instructions ask about the *old* part of a record (first
  diagnosis, a value years ago, an old admission), so that keeping only the most recent tokens loses answers.
  Each instruction's `metadata["evidence_depth"]` is the fraction of record tokens from its oldest evidence
  event to the end of the record (1.0 = the evidence is at the very start).

Everything is a pure function of the seed: same seed, byte-identical files. Generation does not depend on the
tokenizer (lengths are steered by a character estimate); only the depth metadata and the summary count tokens.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Callable, Sequence

from pydantic import BaseModel, Field

from medalign_rag.errors import MedalignError
from medalign_rag.records.model import (
    Demographics,
    Encounter,
    Event,
    EventKind,
    Instruction,
    PatientRecord,
    check_patient_id,
)
from medalign_rag.records.serialize import render_encounter, render_person, render_record, write_release_xml
from medalign_rag.tokenization import TokenCounter, count_many, default_counter

__all__ = [
    "INSTRUCTIONS_FILENAME",
    "LENGTH_TIERS",
    "CohortSummary",
    "PatientSummary",
    "SyntheticPatient",
    "evidence_depths",
    "generate_cohort",
    "generate_patient",
]

INSTRUCTIONS_FILENAME = "clinician-instruction-responses.tsv"

# The simulated calendar ends here; nothing reads the clock, so output never depends on when it was made.
_CALENDAR_END = datetime(2023, 12, 31, 0, 0)
# Rendered release XML with these vocabularies runs at about this many characters per cl100k token.
_CHARS_PER_TOKEN = 3.15

# --------------------------------------------------------------------------------------------- vocabularies


@dataclass(frozen=True)
class _Measure:
    key: str
    code: str
    name: str
    unit: str
    decimals: int
    label: str  # what a clinician calls it in a question
    display_unit: str  # how a note or an answer writes the unit

    def fmt(self, value: float) -> str:
        return f"{value:.{self.decimals}f}"

    def say(self, value: float) -> str:
        separator = "" if self.display_unit in ("%", "") else " "
        return f"{self.fmt(value)}{separator}{self.display_unit}"


_MEASURES: dict[str, _Measure] = {
    m.key: m
    for m in [
        # vitals
        _Measure("sbp", "LOINC/8480-6", "Systolic blood pressure", "mm[Hg]", 0, "systolic blood pressure", "mmHg"),
        _Measure("dbp", "LOINC/8462-4", "Diastolic blood pressure", "mm[Hg]", 0, "diastolic blood pressure", "mmHg"),
        _Measure("hr", "LOINC/8867-4", "Heart rate", "/min", 0, "heart rate", "/min"),
        _Measure("rr", "LOINC/9279-1", "Respiratory rate", "/min", 0, "respiratory rate", "/min"),
        _Measure("temp", "LOINC/8310-5", "Body temperature", "Cel", 1, "temperature", "C"),
        _Measure("spo2", "LOINC/59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0,
                 "oxygen saturation", "%"),
        _Measure("weight", "LOINC/29463-7", "Body weight", "kg", 1, "weight", "kg"),
        _Measure("bmi", "LOINC/39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 1, "BMI", "kg/m2"),
        # labs
        _Measure("a1c", "LOINC/4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1, "hemoglobin A1c", "%"),
        _Measure("glucose", "LOINC/2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 0, "glucose",
                 "mg/dL"),
        _Measure("sodium", "LOINC/2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 0, "sodium",
                 "mmol/L"),
        _Measure("potassium", "LOINC/2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1,
                 "potassium", "mmol/L"),
        _Measure("chloride", "LOINC/2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 0, "chloride",
                 "mmol/L"),
        _Measure("co2", "LOINC/2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 0,
                 "bicarbonate", "mmol/L"),
        _Measure("bun", "LOINC/3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 0, "BUN",
                 "mg/dL"),
        _Measure("creatinine", "LOINC/2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 2,
                 "creatinine", "mg/dL"),
        _Measure("egfr", "LOINC/62238-1",
                 "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
                 "Creatinine-based formula (CKD-EPI)", "mL/min/{1.73_m2}", 0, "eGFR", "mL/min/1.73m2"),
        _Measure("calcium", "LOINC/17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 1, "calcium",
                 "mg/dL"),
        _Measure("wbc", "LOINC/6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 1,
                 "white blood cell count", "K/uL"),
        _Measure("hemoglobin", "LOINC/718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1, "hemoglobin", "g/dL"),
        _Measure("platelets", "LOINC/777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 0,
                 "platelet count", "K/uL"),
        _Measure("cholesterol", "LOINC/2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "total cholesterol", "mg/dL"),
        _Measure("hdl", "LOINC/2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "HDL cholesterol", "mg/dL"),
        _Measure("ldl", "LOINC/13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
                 "mg/dL", 0, "LDL cholesterol", "mg/dL"),
        _Measure("triglycerides", "LOINC/2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "triglycerides", "mg/dL"),
        _Measure("tsh", "LOINC/3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 2, "TSH",
                 "mIU/L"),
        _Measure("uacr", "LOINC/9318-7", "Albumin/Creatinine [Mass Ratio] in Urine", "mg/g{creat}", 0,
                 "urine albumin-to-creatinine ratio", "mg/g"),
        _Measure("troponin", "LOINC/10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", 2,
                 "troponin I", "ng/mL"),
        _Measure("bnp", "LOINC/30934-4", "Natriuretic peptide B [Mass/volume] in Serum or Plasma", "pg/mL", 0, "BNP",
                 "pg/mL"),
        _Measure("inr", "LOINC/6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 1, "INR", ""),
    ]
}
_VITALS = ("sbp", "dbp", "hr", "rr", "temp", "spo2")
_BMP = ("sodium", "potassium", "chloride", "co2", "bun", "creatinine", "glucose", "calcium", "egfr")
_CBC = ("wbc", "hemoglobin", "platelets")
_LIPIDS = ("cholesterol", "hdl", "ldl", "triglycerides")


@dataclass(frozen=True)
class _Drug:
    key: str
    code: str
    name: str
    ingredient: str
    sig: str
    treats: tuple[str, ...] = ()  # chronic condition keys this drug is prescribed for
    effects: tuple[tuple[str, float], ...] = ()  # latent physiology it shifts while active


_DRUGS: dict[str, _Drug] = {
    d.key: d
    for d in [
        # chronic
        _Drug("lisinopril10", "RxNorm/314076", "lisinopril 10 MG Oral Tablet", "lisinopril",
              "10 mg by mouth once daily", ("hypertension",), (("sbp", -9.0), ("potassium", 0.2))),
        _Drug("lisinopril20", "RxNorm/314077", "lisinopril 20 MG Oral Tablet", "lisinopril",
              "20 mg by mouth once daily", ("hypertension",), (("sbp", -13.0), ("potassium", 0.3))),
        _Drug("losartan50", "RxNorm/979492", "losartan potassium 50 MG Oral Tablet", "losartan",
              "50 mg by mouth once daily", ("hypertension",), (("sbp", -11.0), ("potassium", 0.2))),
        _Drug("amlodipine5", "RxNorm/197361", "amlodipine 5 MG Oral Tablet", "amlodipine",
              "5 mg by mouth once daily", ("hypertension",), (("sbp", -9.0),)),
        _Drug("amlodipine10", "RxNorm/308135", "amlodipine 10 MG Oral Tablet", "amlodipine",
              "10 mg by mouth once daily", ("hypertension",), (("sbp", -13.0),)),
        _Drug("hctz25", "RxNorm/310798", "hydrochlorothiazide 25 MG Oral Tablet", "hydrochlorothiazide",
              "25 mg by mouth once daily in the morning", ("hypertension",), (("sbp", -9.0), ("sodium", -3.0))),
        _Drug("metformin500", "RxNorm/861007", "metformin hydrochloride 500 MG Oral Tablet", "metformin",
              "500 mg by mouth twice daily with meals", ("t2dm",), (("a1c", -0.8),)),
        _Drug("metformin1000", "RxNorm/861004", "metformin hydrochloride 1000 MG Oral Tablet", "metformin",
              "1000 mg by mouth twice daily with meals", ("t2dm",), (("a1c", -1.2),)),
        _Drug("glipizide5", "RxNorm/310488", "glipizide 5 MG Oral Tablet", "glipizide",
              "5 mg by mouth once daily before breakfast", ("t2dm",), (("a1c", -0.9),)),
        _Drug("empagliflozin10", "RxNorm/1545658", "empagliflozin 10 MG Oral Tablet", "empagliflozin",
              "10 mg by mouth once daily", ("t2dm",), (("a1c", -0.6), ("uacr", -0.3))),
        _Drug("glargine", "RxNorm/261551", "insulin glargine 100 UNT/ML Injectable Solution", "insulin glargine",
              "inject 14 units subcutaneously at bedtime", ("t2dm",), (("a1c", -1.6),)),
        _Drug("atorvastatin20", "RxNorm/617312", "atorvastatin 20 MG Oral Tablet", "atorvastatin",
              "20 mg by mouth once daily at bedtime", ("hyperlipidemia",), (("ldl", -0.43),)),
        _Drug("atorvastatin40", "RxNorm/617311", "atorvastatin 40 MG Oral Tablet", "atorvastatin",
              "40 mg by mouth once daily at bedtime", ("hyperlipidemia",), (("ldl", -0.50),)),
        _Drug("levothyroxine50", "RxNorm/966221", "levothyroxine sodium 0.05 MG Oral Tablet", "levothyroxine",
              "50 mcg by mouth once daily before breakfast", ("hypothyroidism",), (("tsh", -0.55),)),
        _Drug("levothyroxine75", "RxNorm/966222", "levothyroxine sodium 0.075 MG Oral Tablet", "levothyroxine",
              "75 mcg by mouth once daily before breakfast", ("hypothyroidism",), (("tsh", -0.78),)),
        _Drug("albuterol", "RxNorm/745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "albuterol",
              "2 puffs inhaled every 4-6 hours as needed for wheezing", ("copd",)),
        _Drug("tiotropium", "RxNorm/485032", "tiotropium 0.018 MG Inhalation Powder", "tiotropium",
              "inhale contents of 1 capsule once daily", ("copd",), (("spo2", 1.0),)),
        _Drug("furosemide40", "RxNorm/313988", "furosemide 40 MG Oral Tablet", "furosemide",
              "40 mg by mouth once daily", ("heart_failure",), (("weight", -1.5), ("potassium", -0.3))),
        _Drug("metoprolol", "RxNorm/866436", "24 HR metoprolol succinate 50 MG Extended Release Oral Tablet",
              "metoprolol succinate", "50 mg by mouth once daily", ("heart_failure", "atrial_fibrillation"),
              (("hr", -14.0), ("sbp", -4.0))),
        _Drug("apixaban", "RxNorm/1364445", "apixaban 5 MG Oral Tablet", "apixaban", "5 mg by mouth twice daily",
              ("atrial_fibrillation",)),
        _Drug("sertraline50", "RxNorm/312940", "sertraline 50 MG Oral Tablet", "sertraline",
              "50 mg by mouth once daily", ("depression",)),
        _Drug("omeprazole20", "RxNorm/198053", "omeprazole 20 MG Delayed Release Oral Capsule", "omeprazole",
              "20 mg by mouth once daily before breakfast", ("gerd",)),
        _Drug("acetaminophen500", "RxNorm/198440", "acetaminophen 500 MG Oral Tablet", "acetaminophen",
              "1000 mg by mouth every 8 hours as needed for knee pain", ("osteoarthritis",)),
        # acute and inpatient
        _Drug("ceftriaxone", "RxNorm/1665021", "ceftriaxone 1000 MG Injection", "ceftriaxone",
              "1 g IV every 24 hours"),
        _Drug("azithromycin", "RxNorm/308460", "azithromycin 250 MG Oral Tablet", "azithromycin",
              "500 mg by mouth on day 1, then 250 mg daily for 4 days"),
        _Drug("amox_clav", "RxNorm/617296", "amoxicillin 875 MG / clavulanate 125 MG Oral Tablet",
              "amoxicillin-clavulanate", "1 tablet by mouth twice daily for 5 days"),
        _Drug("albuterol_neb", "RxNorm/245314", "albuterol 0.83 MG/ML Inhalation Solution", "albuterol",
              "2.5 mg nebulized every 4 hours"),
        _Drug("prednisone", "RxNorm/312615", "predniSONE 20 MG Oral Tablet", "prednisone",
              "40 mg by mouth once daily for 5 days"),
        _Drug("furosemide_iv", "RxNorm/1719286", "furosemide 10 MG/ML Injectable Solution", "furosemide",
              "40 mg IV twice daily"),
        _Drug("saline", "RxNorm/313002", "sodium chloride 9 MG/ML Injectable Solution", "sodium chloride 0.9%",
              "1 L IV bolus, then 100 mL/h"),
        _Drug("cefazolin", "RxNorm/1665060", "cefazolin 2000 MG Injection", "cefazolin", "2 g IV every 8 hours"),
        _Drug("cephalexin", "RxNorm/309114", "cephalexin 500 MG Oral Capsule", "cephalexin",
              "500 mg by mouth four times daily for 7 days"),
        _Drug("ciprofloxacin", "RxNorm/309309", "ciprofloxacin 500 MG Oral Tablet", "ciprofloxacin",
              "500 mg by mouth twice daily for 7 days"),
        _Drug("aspirin_load", "RxNorm/243670", "aspirin 81 MG Chewable Tablet", "aspirin", "324 mg chewed once"),
        _Drug("dextrose", "RxNorm/1795477", "glucose 500 MG/ML Injectable Solution", "dextrose 50%", "25 g IV once"),
        _Drug("pantoprazole_iv", "RxNorm/1094107", "pantoprazole 40 MG Injection", "pantoprazole",
              "40 mg IV twice daily"),
        _Drug("pantoprazole", "RxNorm/314200", "pantoprazole 40 MG Delayed Release Oral Tablet", "pantoprazole",
              "40 mg by mouth twice daily for 8 weeks"),
        _Drug("ibuprofen", "RxNorm/197806", "ibuprofen 600 MG Oral Tablet", "ibuprofen",
              "600 mg by mouth every 6 hours as needed for pain"),
        _Drug("metoprolol_iv", "RxNorm/866508", "metoprolol tartrate 1 MG/ML Injectable Solution",
              "metoprolol tartrate", "5 mg IV once"),
        _Drug("enoxaparin", "RxNorm/854235", "enoxaparin sodium 40 MG/0.4ML Prefilled Syringe", "enoxaparin",
              "40 mg subcutaneously once daily"),
        _Drug("oxycodone_apap", "RxNorm/1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG Oral Tablet",
              "oxycodone-acetaminophen", "1 tablet by mouth every 6 hours as needed for severe pain"),
        _Drug("heparin", "RxNorm/1361615", "heparin sodium, porcine 5000 UNT/ML Injectable Solution", "heparin",
              "5000 units subcutaneously every 8 hours"),
        _Drug("ondansetron", "RxNorm/312086", "ondansetron 4 MG Disintegrating Oral Tablet", "ondansetron",
              "4 mg by mouth every 8 hours as needed for nausea"),
    ]
}
_DRUG_BY_CODE: dict[str, _Drug] = {}
for _drug in _DRUGS.values():
    # Several keys may share a code (acute and chronic use of one product); the chronic one names the indication.
    if _drug.code not in _DRUG_BY_CODE or _drug.treats:
        _DRUG_BY_CODE[_drug.code] = _drug


@dataclass(frozen=True)
class _Condition:
    key: str
    code: str
    name: str
    label: str  # in "When was <label> first diagnosed?"
    family: str  # code prefix shared by every code that means this condition
    med_label: str  # in "prescribed for <med_label>"
    weight: float  # how often it is drawn for a patient
    first_line: tuple[str, ...]  # drugs started at diagnosis
    established: tuple[str, ...]  # drugs a patient already has when the record opens with the condition


_CONDITIONS: dict[str, _Condition] = {
    c.key: c
    for c in [
        _Condition("hypertension", "ICD10CM/I10", "Essential (primary) hypertension", "hypertension", "ICD10CM/I10",
                   "hypertension", 0.9, ("lisinopril10",), ("lisinopril10", "amlodipine5")),
        _Condition("t2dm", "ICD10CM/E11.9", "Type 2 diabetes mellitus without complications", "type 2 diabetes",
                   "ICD10CM/E11", "diabetes", 0.65, ("metformin500",), ("metformin1000",)),
        _Condition("hyperlipidemia", "ICD10CM/E78.5", "Hyperlipidemia, unspecified", "hyperlipidemia",
                   "ICD10CM/E78", "high cholesterol", 0.6, ("atorvastatin20",), ("atorvastatin20",)),
        _Condition("ckd", "ICD10CM/N18.31", "Chronic kidney disease, stage 3a", "chronic kidney disease",
                   "ICD10CM/N18", "chronic kidney disease", 0.3, (), ()),
        _Condition("hypothyroidism", "ICD10CM/E03.9", "Hypothyroidism, unspecified", "hypothyroidism",
                   "ICD10CM/E03", "hypothyroidism", 0.3, ("levothyroxine50",), ("levothyroxine75",)),
        _Condition("copd", "ICD10CM/J44.9", "Chronic obstructive pulmonary disease, unspecified", "COPD",
                   "ICD10CM/J44", "COPD", 0.22, ("albuterol",), ("albuterol", "tiotropium")),
        _Condition("heart_failure", "ICD10CM/I50.22", "Chronic systolic (congestive) heart failure",
                   "heart failure", "ICD10CM/I50", "heart failure", 0.15, ("furosemide40", "metoprolol"),
                   ("furosemide40", "metoprolol")),
        _Condition("atrial_fibrillation", "ICD10CM/I48.91", "Unspecified atrial fibrillation", "atrial fibrillation",
                   "ICD10CM/I48", "atrial fibrillation", 0.15, ("apixaban", "metoprolol"), ("apixaban", "metoprolol")),
        _Condition("depression", "ICD10CM/F32.9", "Major depressive disorder, single episode, unspecified",
                   "depression", "ICD10CM/F32", "depression", 0.25, ("sertraline50",), ("sertraline50",)),
        _Condition("gerd", "ICD10CM/K21.9", "Gastro-esophageal reflux disease without esophagitis", "GERD",
                   "ICD10CM/K21", "acid reflux", 0.25, ("omeprazole20",), ("omeprazole20",)),
        _Condition("osteoarthritis", "ICD10CM/M17.11", "Unilateral primary osteoarthritis, right knee",
                   "osteoarthritis of the right knee", "ICD10CM/M17", "knee osteoarthritis", 0.2,
                   ("acetaminophen500",), ("acetaminophen500",)),
        _Condition("obesity", "ICD10CM/E66.9", "Obesity, unspecified", "obesity", "ICD10CM/E66", "obesity", 0.3,
                   (), ()),
    ]
}
# Conditions a patient's record is built around: each has a drug, so every patient has a medication history.
_ANCHOR_CONDITIONS = ("hypertension", "t2dm", "hyperlipidemia", "hypothyroidism")
# Diagnosed from a lab value, which is therefore drawn at the visit that makes the diagnosis.
_LAB_DIAGNOSED = {"t2dm": ("a1c",), "ckd": _BMP, "hyperlipidemia": _LIPIDS, "hypothyroidism": ("tsh",)}


@dataclass(frozen=True)
class _Imaging:
    code: str
    name: str
    title: str
    technique: str
    normal: str


_IMAGING: dict[str, _Imaging] = {
    "cxr": _Imaging("CPT4/71046", "Radiologic examination, chest; 2 views", "CHEST X-RAY, 2 VIEWS",
                    "PA and lateral views of the chest.",
                    "The lungs are clear. No focal consolidation, pleural effusion or pneumothorax. "
                    "Normal heart size."),
    "cxr1": _Imaging("CPT4/71045", "Radiologic examination, chest; single view", "CHEST X-RAY, PORTABLE",
                     "Single portable AP view of the chest.",
                     "No focal consolidation, pleural effusion or pneumothorax. "
                     "Cardiomediastinal silhouette is normal."),
    "ct_head": _Imaging("CPT4/70450", "Computed tomography, head or brain; without contrast material",
                        "CT HEAD WITHOUT CONTRAST", "Axial images from skull base to vertex without contrast.",
                        "No acute intracranial hemorrhage, mass effect or territorial infarct. Ventricles normal."),
    "ankle_xr": _Imaging("CPT4/73610", "Radiologic examination, ankle; complete, minimum of 3 views",
                         "RIGHT ANKLE X-RAY, 3 VIEWS", "AP, mortise and lateral views of the right ankle.",
                         "No acute fracture or dislocation. Lateral soft tissue swelling. Ankle mortise intact."),
    "renal_us": _Imaging("CPT4/76770", "Ultrasound, retroperitoneal (eg, renal, aorta, nodes); complete",
                         "RENAL ULTRASOUND", "Grayscale and color Doppler images of both kidneys and the bladder.",
                         "Normal-sized kidneys without hydronephrosis, stones or masses. Bladder unremarkable."),
    "echo": _Imaging("CPT4/93306", "Echocardiography, transthoracic, complete, with Doppler",
                     "TRANSTHORACIC ECHOCARDIOGRAM", "Complete 2D, M-mode, color and spectral Doppler study.",
                     "Normal left ventricular size and systolic function, LVEF 60%. No significant valve disease."),
    "knee_xr": _Imaging("CPT4/73562", "Radiologic examination, knee; 3 views", "RIGHT KNEE X-RAY, 3 VIEWS",
                        "AP, lateral and sunrise views of the right knee.",
                        "Mild joint space narrowing without fracture or effusion."),
}


@dataclass(frozen=True)
class _Acute:
    key: str
    code: str
    name: str
    label: str
    complaint: str
    weight: float
    admit_prob: float
    stay_days: tuple[int, int]
    ed_drugs: tuple[str, ...]
    ward_drugs: tuple[str, ...]
    discharge_drugs: tuple[str, ...]
    imaging: str | None
    finding: str  # the imaging impression when this problem is present ("" = the study is normal)
    course: str  # one sentence of hospital course
    effects: tuple[tuple[str, float], ...]  # latent physiology shift at full severity


_ACUTE: dict[str, _Acute] = {
    a.key: a
    for a in [
        _Acute("pneumonia", "ICD10CM/J18.9", "Pneumonia, unspecified organism", "community-acquired pneumonia",
               "fever, productive cough and shortness of breath for three days", 1.0, 0.7, (3, 6),
               ("ceftriaxone", "azithromycin"), ("ceftriaxone", "azithromycin"), ("amox_clav",), "cxr",
               "Patchy consolidation in the right lower lobe consistent with pneumonia. No pleural effusion.",
               "treated with IV ceftriaxone and azithromycin with defervescence and improving oxygenation",
               (("wbc", 8.0), ("temp", 1.8), ("hr", 22.0), ("rr", 7.0), ("spo2", -6.0))),
        _Acute("copd_exacerbation", "ICD10CM/J44.1",
               "Chronic obstructive pulmonary disease with (acute) exacerbation", "COPD exacerbation",
               "worsening shortness of breath and wheezing for four days", 0.0, 0.6, (2, 5),
               ("albuterol_neb", "prednisone"), ("albuterol_neb", "prednisone", "azithromycin"), ("prednisone",),
               "cxr", "Hyperinflated lungs without focal consolidation.",
               "treated with scheduled nebulized albuterol, prednisone and azithromycin, weaned to room air",
               (("spo2", -7.0), ("rr", 8.0), ("hr", 15.0), ("wbc", 2.0))),
        _Acute("chf_exacerbation", "ICD10CM/I50.23", "Acute on chronic systolic (congestive) heart failure",
               "acute on chronic systolic heart failure", "progressive leg swelling, orthopnea and weight gain",
               0.0, 0.9, (3, 7), ("furosemide_iv",), ("furosemide_iv",), (), "cxr",
               "Cardiomegaly with interstitial edema and small bilateral pleural effusions.",
               "diuresed with IV furosemide with net negative fluid balance and resolution of orthopnea",
               (("bnp", 1.0), ("weight", 3.5), ("spo2", -5.0), ("rr", 6.0), ("creatinine", 0.25))),
        _Acute("aki", "ICD10CM/N17.9", "Acute kidney failure, unspecified", "acute kidney injury",
               "poor oral intake, vomiting and lightheadedness for three days", 0.0, 0.8, (2, 5), ("saline",),
               ("saline", "ondansetron"), (), "renal_us", "",
               "treated with IV fluids while nephrotoxic and antihypertensive medications were held; creatinine "
               "improved toward baseline",
               (("creatinine", 1.0), ("bun", 25.0), ("potassium", 0.7), ("co2", -4.0), ("sbp", -15.0))),
        _Acute("uti", "ICD10CM/N39.0", "Urinary tract infection, site not specified", "urinary tract infection",
               "dysuria, urinary frequency and low-grade fever", 0.7, 0.25, (2, 4), ("ceftriaxone",),
               ("ceftriaxone",), ("ciprofloxacin",), None, "",
               "treated with IV ceftriaxone, transitioned to oral ciprofloxacin once afebrile",
               (("wbc", 5.0), ("temp", 1.2), ("hr", 12.0))),
        _Acute("cellulitis", "ICD10CM/L03.115", "Cellulitis of right lower limb", "cellulitis of the right leg",
               "redness, warmth and swelling of the right lower leg", 0.6, 0.4, (2, 4), ("cefazolin",),
               ("cefazolin",), ("cephalexin",), None, "",
               "treated with IV cefazolin with receding erythema, transitioned to oral cephalexin",
               (("wbc", 5.0), ("temp", 1.0), ("hr", 10.0))),
        _Acute("chest_pain", "ICD10CM/R07.9", "Chest pain, unspecified", "chest pain",
               "substernal chest pressure at rest lasting twenty minutes", 0.9, 0.35, (1, 2), ("aspirin_load",),
               (), (), "cxr1", "",
               "ruled out for acute coronary syndrome with serial troponins and ECGs; outpatient stress test planned",
               (("hr", 10.0), ("sbp", 12.0))),
        _Acute("syncope", "ICD10CM/R55", "Syncope and collapse", "syncope",
               "a brief loss of consciousness after standing up quickly", 0.5, 0.4, (1, 3), ("saline",), ("saline",),
               (), "ct_head", "", "monitored on telemetry without arrhythmia; orthostatic hypotension on testing",
               (("sbp", -12.0),)),
        _Acute("hypoglycemia", "ICD10CM/E11.649", "Type 2 diabetes mellitus with hypoglycemia without coma",
               "hypoglycemia", "confusion and sweating with a fingerstick glucose of 41 mg/dL", 0.0, 0.2, (1, 2),
               ("dextrose",), (), (), None, "", "observed with hourly glucose checks; glipizide was stopped",
               (("glucose", 1.0), ("hr", 15.0))),
        _Acute("gi_bleed", "ICD10CM/K92.2", "Gastrointestinal hemorrhage, unspecified",
               "upper gastrointestinal bleeding", "black tarry stools and dizziness for two days", 0.25, 1.0, (3, 5),
               ("pantoprazole_iv",), ("pantoprazole_iv",), ("pantoprazole",), None, "",
               "transfused two units of packed red cells; upper endoscopy showed a duodenal ulcer without active "
               "bleeding, treated with IV pantoprazole",
               (("hemoglobin", -5.5), ("hr", 20.0), ("sbp", -18.0), ("bun", 20.0))),
        _Acute("ankle_sprain", "ICD10CM/S93.401A",
               "Sprain of unspecified ligament of right ankle, initial encounter", "right ankle sprain",
               "right ankle pain and swelling after a fall on the stairs", 0.5, 0.0, (1, 1), ("ibuprofen",), (),
               ("ibuprofen",), "ankle_xr", "", "", (("hr", 8.0),)),
        _Acute("new_afib", "ICD10CM/I48.91", "Unspecified atrial fibrillation",
               "atrial fibrillation with rapid ventricular response", "palpitations and shortness of breath since "
               "this morning", 0.3, 0.6, (1, 3), ("metoprolol_iv",), ("metoprolol_iv",), (), "cxr1", "",
               "rate controlled with IV then oral metoprolol; anticoagulation started with apixaban",
               (("hr", 45.0),)),
        _Acute("knee_replacement", "ICD10CM/M17.11", "Unilateral primary osteoarthritis, right knee",
               "elective right total knee arthroplasty for osteoarthritis", "elective right total knee arthroplasty",
               0.0, 1.0, (2, 3), (), ("cefazolin", "enoxaparin", "oxycodone_apap"), ("oxycodone_apap", "enoxaparin"),
               "knee_xr", "Postoperative right total knee arthroplasty in expected position without complication.",
               "underwent an uncomplicated right total knee arthroplasty and worked with physical therapy",
               (("hemoglobin", -1.8),)),
    ]
}
_ACUTE_PROCEDURES: dict[str, tuple[tuple[str, str], ...]] = {
    "chest_pain": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "syncope": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "new_afib": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "chf_exacerbation": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "gi_bleed": (("CPT4/36430", "Transfusion, blood or blood components"),
                 ("CPT4/43239", "Esophagogastroduodenoscopy, flexible, transoral; with biopsy, single or multiple")),
    "knee_replacement": (("CPT4/27447", "Arthroplasty, knee, condyle and plateau; medial AND lateral compartments "
                                        "with or without patella resurfacing (total knee arthroplasty)"),),
}
_ACUTE_LABS: dict[str, tuple[str, ...]] = {
    "chest_pain": ("troponin",),
    "syncope": ("troponin",),
    "new_afib": ("troponin", "tsh"),
    "chf_exacerbation": ("bnp", "troponin"),
    "gi_bleed": ("inr",),
}

_CLINICIANS = (
    "Maria Alvarez, MD", "James Chen, MD", "Priya Raman, MD", "Samuel Okafor, MD", "Laura Becker, MD",
    "Daniel Kim, MD", "Hannah Weiss, MD", "Omar Haddad, MD", "Grace Liu, MD", "Peter Novak, MD",
)
_HOSPITALISTS = ("Elena Petrova, MD", "Michael Brown, MD", "Aisha Rahman, MD", "David Cohen, MD", "Nora Lindqvist, MD")
_EMERGENCY_DOCTORS = ("Jessica Jones, MD", "Carlos Mendes, MD", "Kevin O'Brien, MD", "Yuki Tanaka, MD")
_RADIOLOGISTS = ("Robert Hale, MD", "Sofia Marino, MD", "Ian Fraser, MD")
_CLINICS = ("Internal Medicine Clinic", "Family Medicine Clinic", "Primary Care Clinic - Hoover Pavilion")
_RACES = ("White", "Asian", "Black or African American", "Other Race", "Native Hawaiian or Other Pacific Islander")
_ETHNICITIES = ("Not Hispanic or Latino", "Hispanic or Latino")
_E_AND_M = {
    "office": ("CPT4/99214", "Office or other outpatient visit for the evaluation and management of an established "
                             "patient, moderate medical decision making"),
    "office_new": ("CPT4/99204", "Office or other outpatient visit for the evaluation and management of a new "
                                 "patient, moderate medical decision making"),
    "ed": ("CPT4/99284", "Emergency department visit for the evaluation and management of a patient, moderate "
                         "medical decision making"),
    "admit": ("CPT4/99223", "Initial hospital inpatient or observation care, high medical decision making"),
    "daily": ("CPT4/99232", "Subsequent hospital inpatient or observation care, moderate medical decision making"),
    "discharge": ("CPT4/99239", "Hospital inpatient or observation discharge day management; more than 30 minutes"),
    "venipuncture": ("CPT4/36415", "Collection of venous blood by venipuncture"),
    "flu": ("CPT4/90686", "Influenza virus vaccine, quadrivalent (IIV4), split virus, preservative free, 0.5 mL "
                          "dosage, for intramuscular use"),
    "ecg": ("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation and report"),
    "retina": ("CPT4/92250", "Fundus photography with interpretation and report"),
    "spirometry": ("CPT4/94010", "Spirometry, including graphic record, total and timed vital capacity"),
}
_NOTE_CODES = {
    "progress": ("LOINC/11506-3", "Progress note"),
    "ed": ("LOINC/34111-5", "Emergency department Note"),
    "hp": ("LOINC/34117-2", "History and physical note"),
    "inpatient_progress": ("LOINC/11506-3", "Progress note"),
    "discharge": ("LOINC/18842-5", "Discharge summary"),
    "radiology": ("LOINC/18748-4", "Diagnostic imaging study"),
    "procedure": ("LOINC/28570-0", "Procedure note"),
}


# ----------------------------------------------------------------------------------------------- length tiers


@dataclass(frozen=True)
class _Tier:
    tokens: tuple[int, int]  # target record length, estimated tokens
    years: tuple[float, float]  # planned span of the record
    n_conditions: tuple[int, int]
    emergency_rate: float  # share of encounters that are emergency visits
    lab_rate: float  # share that are lab-only visits


LENGTH_TIERS: dict[str, _Tier] = {
    "short": _Tier((1500, 3600), (0.8, 2.5), (1, 2), 0.10, 0.15),
    "medium": _Tier((9000, 30000), (3.0, 7.0), (2, 4), 0.10, 0.20),
    "long": _Tier((47000, 70000), (7.0, 11.0), (3, 5), 0.12, 0.20),
    "very_long": _Tier((88000, 112000), (10.0, 15.0), (4, 6), 0.12, 0.20),
}
# Share of a cohort per tier (the release: most records beyond 32k tokens, some beyond 100k; a few short ones).
_TIER_SHARES = (("short", 0.25), ("medium", 0.45), ("long", 0.15), ("very_long", 0.15))


def _assign_tiers(n_patients: int, rng: random.Random) -> list[str]:
    """Tier per patient: counts by largest remainder (so every cohort of 20 has the same spread), order shuffled."""
    exact = [(name, share * n_patients) for name, share in _TIER_SHARES]
    counts = {name: int(value) for name, value in exact}
    leftover = n_patients - sum(counts.values())
    by_remainder = sorted(exact, key=lambda item: (-(item[1] - int(item[1])), item[0]))
    for name, _ in by_remainder[:leftover]:
        counts[name] += 1
    tiers = [name for name, _ in _TIER_SHARES for _ in range(counts[name])]
    rng.shuffle(tiers)
    return tiers


# ------------------------------------------------------------------------------------------- record building


@dataclass
class _Draft:
    """An event before its id is known (ids follow record order, which is fixed once its encounter is done)."""

    timestamp: datetime
    kind: EventKind
    code: str | None = None
    name: str | None = None
    value: str | None = None
    unit: str | None = None
    text: str | None = None
    event_id: str = ""


@dataclass
class _EncounterDraft:
    type: str
    start: datetime
    events: list[_Draft] = field(default_factory=list)
    end: datetime | None = None

    def add(self, timestamp: datetime, kind: EventKind, **fields: str | None) -> _Draft:
        draft = _Draft(timestamp=timestamp, kind=kind, **fields)
        self.events.append(draft)
        return draft


@dataclass
class _Stop:
    """A medication stopped for a reason: the note that says so is the evidence."""

    ingredient: str
    drug_name: str
    when: datetime
    reason: str
    note: _Draft | None = None
    support: list[_Draft] = field(default_factory=list)


@dataclass
class _Stay:
    """An emergency visit or an admission, with what a clinician's summary of it would say."""

    kind: str  # "emergency" | "admission"
    start: datetime
    end: datetime
    problem: _Acute
    summary: str
    diagnosis: _Draft
    note: _Draft  # ED note or discharge summary


@dataclass
class _OfficeFact:
    start: datetime
    reason: str
    summary: str
    note: _Draft
    sbp: _Draft
    dbp: _Draft


def _titrated_glargine(units: int) -> _Drug:
    """Insulin glargine at a higher nightly dose: same product, new sig, more effect."""
    base = _DRUGS["glargine"]
    return _Drug(base.key, base.code, base.name, base.ingredient,
                 f"inject {units} units subcutaneously at bedtime", base.treats,
                 (("a1c", -1.6 - 0.3 * (units - 14) / 4),))


def _day(value: datetime) -> str:
    return value.strftime("%Y-%m-%d")


def _clock(day: date, hour: int, minute: int) -> datetime:
    return datetime.combine(day, time(hour, minute))


def _join(words: Sequence[str]) -> str:
    words = list(words)
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _egfr(creatinine: float, age: float, female: bool) -> float:
    """CKD-EPI 2021 (race-free) estimate, as labs report it."""
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine / kappa
    value = 142.0 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.2 * 0.9938**age
    return value * (1.012 if female else 1.0)


class _Simulator:
    """One patient's life in the health system: latent physiology, care decisions, and the record they leave."""

    def __init__(self, rng: random.Random, patient_id: str, tier: str) -> None:
        self.rng = rng
        self.patient_id = patient_id
        self.tier_name = tier
        self.tier = LENGTH_TIERS[tier]
        self.target_tokens = rng.randint(*self.tier.tokens)
        span_days = int(rng.uniform(*self.tier.years) * 365.25)
        self.planned_end = _CALENDAR_END - timedelta(days=rng.randint(0, 240))
        self.start = self.planned_end - timedelta(days=span_days)

        self.female = rng.random() < 0.52
        low_age = 30 if tier == "short" else 42
        age = rng.randint(low_age, 74)
        self.birthdate = datetime(self.start.year - age, rng.randint(1, 12), rng.randint(1, 28))
        self.demographics = Demographics(
            birthdate=self.birthdate,
            gender="FEMALE" if self.female else "MALE",
            race=rng.choice(_RACES),
            ethnicity=rng.choice(_ETHNICITIES),
        )
        self.person_xml = render_person(PatientRecord(patient_id=patient_id, demographics=self.demographics))
        self.pcp = rng.choice(_CLINICIANS)
        self.clinic = rng.choice(_CLINICS)

        self.onset = self._plan_conditions()  # condition key -> progress (0..1) at which it shows
        self.diagnosed: dict[str, datetime] = {}
        self.traits = {
            "ace_cough": rng.random() < 0.4,
            "thiazide_hyponatremia": rng.random() < 0.5,
        }
        self._init_physiology()

        self.active: dict[str, _Drug] = {}  # ingredient -> current product
        self.active_since: dict[str, datetime] = {}
        self.stopped: dict[str, _Stop] = {}
        self.last_change: dict[str, datetime] = {}  # condition key -> last treatment change
        self.latest: dict[str, tuple[datetime, float, _Draft]] = {}
        self.acute: tuple[_Acute, float] | None = None  # current acute problem and its severity
        self.bleed_at: datetime | None = None
        self.last_annual: datetime | None = None
        self.knee_replaced = False
        self.glargine_units = 14

        self.encounters: list[Encounter] = []
        self.drafts: list[_EncounterDraft] = []
        self.n_events = 0
        self.estimated_tokens = 0.0
        self.stops: list[_Stop] = []
        self.stays: list[_Stay] = []
        self.office_visits: list[_OfficeFact] = []

    # ------------------------------------------------------------------ planning

    def _plan_conditions(self) -> dict[str, float]:
        rng = self.rng
        n_conditions = rng.randint(*self.tier.n_conditions)
        chosen = [self._weighted([(k, _CONDITIONS[k].weight) for k in _ANCHOR_CONDITIONS])]
        while len(chosen) < n_conditions:
            pool = [(c.key, c.weight) for c in _CONDITIONS.values() if c.key not in chosen]
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

    def _init_physiology(self) -> None:
        rng, female = self.rng, self.female
        self.height_m = rng.uniform(1.52, 1.72) if female else rng.uniform(1.63, 1.88)
        bmi0 = rng.uniform(30.5, 38.0) if "obesity" in self.onset else rng.uniform(22.0, 29.5)
        self.weight0 = bmi0 * self.height_m**2
        self.weight_drift = rng.uniform(-0.8, 1.0)  # kg per year
        self.sbp_normal = rng.uniform(116, 130)
        self.sbp_high = rng.uniform(150, 166)
        self.hr0 = rng.uniform(62, 82)
        self.rr0 = rng.choice((14, 15, 16, 16, 17, 18))
        self.a1c_normal = rng.uniform(5.1, 5.8)
        self.a1c_diabetic = rng.uniform(7.6, 9.6)
        self.a1c_slope = rng.uniform(0.12, 0.32)  # per year of diabetes, before treatment
        self.creatinine0 = rng.uniform(0.6, 0.9) if female else rng.uniform(0.8, 1.1)
        self.ckd_slope = rng.uniform(0.05, 0.11)  # mg/dL per year once kidney disease shows
        self.ckd_egfr = rng.uniform(47, 57)
        self.hemoglobin0 = rng.uniform(12.4, 14.2) if female else rng.uniform(13.6, 15.6)
        self.platelets0 = rng.uniform(180, 320)
        self.ldl_normal = rng.uniform(90, 135)
        self.ldl_high = rng.uniform(165, 200)
        self.hdl0 = rng.uniform(45, 68) if female else rng.uniform(36, 55)
        self.tg0 = rng.uniform(90, 200)
        self.tsh_normal = rng.uniform(1.1, 3.0)
        self.tsh_high = rng.uniform(7.5, 13.0)
        self.uacr0 = rng.uniform(8, 25)
        self.bnp0 = rng.uniform(140, 320)

    # ------------------------------------------------------------------ latent state

    @property
    def progress(self) -> float:
        return self.estimated_tokens / self.target_tokens

    def shows(self, key: str) -> bool:
        return key in self.diagnosed or (key in self.onset and self.progress >= self.onset[key])

    def age(self, when: datetime) -> int:
        return int((when - self.birthdate).days // 365.25)

    def years(self, when: datetime) -> float:
        return (when - self.start).days / 365.25

    def _effect(self, measure: str) -> float:
        return sum(delta for drug in self.active.values() for name, delta in drug.effects if name == measure)

    def _acute_effect(self, measure: str) -> float:
        if self.acute is None:
            return 0.0
        problem, severity = self.acute
        if measure == "hemoglobin":
            severity = max(severity, 0.6)  # blood loss is made up over weeks, not within the stay
        return severity * sum(delta for name, delta in problem.effects if name == measure)

    def _since_onset(self, key: str, when: datetime) -> float:
        started = self.diagnosed.get(key, when)
        return max(0.0, (when - started).days / 365.25)

    def true_value(self, key: str, when: datetime) -> float:
        """The latent physiology at `when` (before measurement noise)."""
        years = self.years(when)
        if key == "sbp":
            base = self.sbp_high if self.shows("hypertension") else self.sbp_normal
            return base + 0.5 * years + self._effect("sbp") + self._acute_effect("sbp")
        if key == "hr":
            base = self.hr0 + (32 if self.shows("atrial_fibrillation") and "apixaban" not in self.active else 0)
            return base + self._effect("hr") + self._acute_effect("hr")
        if key == "weight":
            return self.weight0 + self.weight_drift * years + self._effect("weight") + self._acute_effect("weight")
        if key == "a1c":
            if not self.shows("t2dm"):
                return self.a1c_normal + 0.025 * years
            return max(5.6, self.a1c_diabetic + self.a1c_slope * self._since_onset("t2dm", when) + self._effect("a1c"))
        if key == "creatinine":
            value = self.creatinine0
            if self.shows("ckd"):
                value = max(value, self._ckd_creatinine(when)) + self.ckd_slope * self._since_onset("ckd", when)
            return value * (1.0 + self._acute_effect("creatinine"))
        if key == "hemoglobin":
            value = self.hemoglobin0 - (0.9 if self.shows("ckd") else 0.0)
            if self.bleed_at is not None and when > self.bleed_at:
                value -= 2.0 * math.exp(-(when - self.bleed_at).days / 40.0)
            return value + self._acute_effect("hemoglobin")
        if key == "ldl":
            base = self.ldl_high if self.shows("hyperlipidemia") else self.ldl_normal
            return base * (1.0 + self._effect("ldl"))
        if key == "tsh":
            base = self.tsh_high if self.shows("hypothyroidism") else self.tsh_normal
            return base * (1.0 + self._effect("tsh"))
        raise KeyError(key)

    def _ckd_creatinine(self, when: datetime) -> float:
        """The creatinine at which this patient's eGFR sits at its (stage 3a) value when kidney disease shows."""
        kappa = 0.7 if self.female else 0.9
        scale = 142.0 * 0.9938 ** self.age(when) * (1.012 if self.female else 1.0)
        return kappa * (self.ckd_egfr / scale) ** (-1 / 1.2)

    def measure(self, key: str, when: datetime) -> float:
        """A measured value: latent state plus noise, clipped to what a lab would report."""
        g = self.rng.gauss
        acute = self._acute_effect
        if key == "sbp":
            return max(82.0, self.true_value("sbp", when) + g(0, 7))
        if key == "dbp":
            return max(48.0, 0.58 * self.true_value("sbp", when) + 6 + g(0, 4))
        if key == "hr":
            return max(48.0, self.true_value("hr", when) + g(0, 5))
        if key == "rr":
            return self.rr0 + acute("rr") + g(0, 1.2)
        if key == "temp":
            return 36.8 + acute("temp") + g(0, 0.2)
        if key == "spo2":
            base = 97.5 - (3.0 if self.shows("copd") else 0.0) + self._effect("spo2")
            return min(100.0, base + acute("spo2") + g(0, 1.0))
        if key == "weight":
            return self.true_value("weight", when) + g(0, 0.6)
        if key == "a1c":
            return min(13.5, max(4.6, self.true_value("a1c", when) + g(0, 0.15)))
        if key == "glucose":
            if self.acute is not None and self.acute[0].key == "hypoglycemia":
                return self.rng.uniform(38, 52) if self.acute[1] > 0.6 else self.rng.uniform(70, 110)
            # fasting draws run below the A1c-estimated average glucose
            return max(65.0, 28.7 * self.true_value("a1c", when) - 62.0 + g(0, 10))
        if key == "creatinine":
            return max(0.4, self.true_value("creatinine", when) * (1 + g(0, 0.04)))
        if key == "bun":
            return max(7.0, 14 + 10 * (self.true_value("creatinine", when) - 0.9) + acute("bun") + g(0, 2.5))
        if key == "sodium":
            thiazide = -4.0 if "hydrochlorothiazide" in self.active and self.traits["thiazide_hyponatremia"] else 0.0
            return 140 + self._effect("sodium") + thiazide + g(0, 1.8)
        if key == "potassium":
            ckd = 0.3 if self.shows("ckd") else 0.0
            return min(6.4, max(3.0, 4.1 + self._effect("potassium") + ckd + acute("potassium") + g(0, 0.25)))
        if key == "chloride":
            return 103 + g(0, 2)
        if key == "co2":
            return 25 + acute("co2") + g(0, 1.6)
        if key == "calcium":
            return 9.4 + g(0, 0.25)
        if key == "wbc":
            return max(3.2, 7.0 + acute("wbc") + g(0, 1.2))
        if key == "hemoglobin":
            return max(6.0, self.true_value("hemoglobin", when) + g(0, 0.3))
        if key == "platelets":
            return max(90.0, self.platelets0 + g(0, 22))
        if key == "ldl":
            return max(40.0, self.true_value("ldl", when) + g(0, 8))
        if key == "hdl":
            return max(25.0, self.hdl0 + g(0, 4))
        if key == "triglycerides":
            return max(50.0, self.tg0 + (45 if self.shows("t2dm") else 0) + g(0, 20))
        if key == "tsh":
            return max(0.05, self.true_value("tsh", when) * (1 + g(0, 0.1)))
        if key == "uacr":
            grow = 9.0 * self._since_onset("t2dm", when) + (60.0 if self.shows("ckd") else 0.0)
            return max(3.0, (self.uacr0 + grow) * (1 + self._effect("uacr")) * (1 + g(0, 0.15)))
        if key == "troponin":
            return self.rng.choice((0.01, 0.01, 0.02, 0.02, 0.03))
        if key == "bnp":
            base = self.bnp0 if self.shows("heart_failure") else 40.0
            return max(10.0, base + 1500 * acute("bnp") + g(0, 25))
        if key == "inr":
            return 1.0 + abs(g(0, 0.08))
        raise KeyError(key)

    # ------------------------------------------------------------------ record plumbing

    def _open(self, encounter_type: str, start: datetime) -> _EncounterDraft:
        return _EncounterDraft(type=encounter_type, start=start)

    def _close(self, draft: _EncounterDraft, end: datetime) -> None:
        """Fix event order and ids, and count the encounter's length toward the patient's target."""
        draft.end = end
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
        self.drafts.append(draft)
        rendered = render_encounter(encounter, include_ids=False, person=self.person_xml)
        self.estimated_tokens += len(rendered) / _CHARS_PER_TOKEN

    def _measure_into(self, enc: _EncounterDraft, when: datetime, keys: Sequence[str]) -> dict[str, float]:
        values: dict[str, float] = {}
        for key in keys:
            spec = _MEASURES[key]
            if key == "egfr":
                value = min(120.0, _egfr(values.get("creatinine", self.measure("creatinine", when)),
                                         self.age(when), self.female))
            elif key == "bmi":
                value = values["weight"] / self.height_m**2
            elif key == "cholesterol":
                continue  # computed from its parts below, written in panel order
            else:
                value = self.measure(key, when)
            values[key] = float(spec.fmt(value))
        if "cholesterol" in keys:
            values["cholesterol"] = float(round(values["ldl"] + values["hdl"] + values["triglycerides"] / 5))
        values = {key: values[key] for key in keys}  # report order, not computation order
        for key in keys:
            spec = _MEASURES[key]
            draft = enc.add(when, EventKind.measurement, code=spec.code, name=spec.name, value=spec.fmt(values[key]),
                            unit=spec.unit)
            self.latest[key] = (when, values[key], draft)
        return values

    def _prescribe(self, enc: _EncounterDraft, when: datetime, drug_key: str | _Drug, *,
                   chronic: bool = True) -> _Drug:
        drug = _DRUGS[drug_key] if isinstance(drug_key, str) else drug_key
        enc.add(when, EventKind.drug, code=drug.code, name=drug.name, value=drug.sig)
        if chronic:
            if drug.ingredient not in self.active:
                self.active_since[drug.ingredient] = when
            self.active[drug.ingredient] = drug
            self.stopped.pop(drug.ingredient, None)
        return drug

    def _stop(self, ingredient: str, when: datetime, reason: str, support: Sequence[_Draft] = ()) -> _Stop:
        drug = self.active.pop(ingredient)
        stop = _Stop(ingredient=ingredient, drug_name=drug.name, when=when, reason=reason, support=list(support))
        self.stopped[ingredient] = stop
        self.stops.append(stop)
        return stop

    def _procedure(self, enc: _EncounterDraft, when: datetime, code: str, name: str) -> _Draft:
        return enc.add(when, EventKind.procedure, code=code, name=name)

    def _note(self, enc: _EncounterDraft, when: datetime, kind: str, text: str) -> _Draft:
        code, name = _NOTE_CODES[kind]
        return enc.add(when, EventKind.note, code=code, name=name, text=text)

    def _condition(self, enc: _EncounterDraft, when: datetime, code: str, name: str) -> _Draft:
        return enc.add(when, EventKind.condition, code=code, name=name)

    def _condition_code(self, key: str) -> tuple[str, str]:
        if key == "t2dm" and "a1c" in self.latest and self.latest["a1c"][1] >= 9.0:
            return "ICD10CM/E11.65", "Type 2 diabetes mellitus with hyperglycemia"
        if key == "ckd" and "egfr" in self.latest and self.latest["egfr"][1] < 45:
            return "ICD10CM/N18.32", "Chronic kidney disease, stage 3b"
        spec = _CONDITIONS[key]
        return spec.code, spec.name

    # ------------------------------------------------------------------ the timeline

    def run(self) -> PatientRecord:
        rng = self.rng
        when = _clock(self.start.date(), rng.randint(8, 15), rng.choice((0, 15, 30, 45)))
        end = self._office_visit(when, first=True)
        while self.estimated_tokens < self.target_tokens:
            day = self._next_day(end)
            kind = self._next_kind()
            if kind == "emergency":
                end = self._emergency_visit(_clock(day, rng.randint(0, 23), rng.choice((5, 20, 35, 50))))
            elif kind == "elective":
                end = self._admission(_clock(day, 7, 0), _ACUTE["knee_replacement"], from_ed=None)
            elif kind == "lab":
                end = self._lab_visit(_clock(day, rng.randint(7, 10), rng.choice((0, 10, 20, 30, 40, 50))))
            else:
                end = self._office_visit(_clock(day, rng.randint(8, 16), rng.choice((0, 15, 30, 45))))
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
            keys += [*_BMP, *_CBC, *_LIPIDS, "a1c"]
            if self.shows("hypothyroidism") or self.rng.random() < 0.3:
                keys.append("tsh")
        else:
            if ("t2dm" in self.diagnosed and stale("a1c", 80)) or (self.shows("t2dm") and stale("a1c", 200)):
                keys.append("a1c")
            if (("ckd" in self.diagnosed or "hypertension" in self.diagnosed) and stale("creatinine", 150)) or (
                self.shows("ckd") and stale("creatinine", 120)
            ):
                keys += list(_BMP)
            if "hypothyroidism" in self.diagnosed and stale("tsh", 150):
                keys.append("tsh")
            if "hyperlipidemia" in self.diagnosed and stale("ldl", 300):
                keys += list(_LIPIDS)
        for key in new_keys:
            keys += list(_LAB_DIAGNOSED.get(key, ()))
        if self.shows("t2dm") and "t2dm" in self.diagnosed and (annual or stale("uacr", 330)):
            keys.append("uacr")
        ordered: list[str] = []
        for key in keys:
            if key not in ordered:
                ordered.append(key)
        # panel order as a lab reports it
        return sorted(ordered, key=list(_MEASURES).index)

    def _office_visit(self, start: datetime, *, first: bool = False) -> datetime:
        rng = self.rng
        enc = self._open("Office Visit", start)
        enc.add(start, EventKind.visit, code="Visit/OP", name="Office Visit", value=self.clinic)
        # The condition shows first, then the next visit diagnoses it: this visit if its onset has come.
        new_keys = [key for key, at in self.onset.items() if key not in self.diagnosed and self.progress >= at]
        lab_triggered = [k for k in new_keys if k in _LAB_DIAGNOSED]
        annual = first or self.last_annual is None or (start - self.last_annual).days >= 330
        if annual:
            self.last_annual = start
        reason = self._visit_reason(start, first, annual, new_keys)

        if first:
            # Conditions the patient arrives with are already treated: their values reflect the established drugs.
            for key in new_keys:
                if self.onset[key] == 0.0:
                    for drug_key in _CONDITIONS[key].established:
                        self.active.setdefault(_DRUGS[drug_key].ingredient, _DRUGS[drug_key])
                        self.active_since.setdefault(_DRUGS[drug_key].ingredient, start)
        t_vitals = start + timedelta(minutes=8)
        vitals = self._measure_into(enc, t_vitals, [*_VITALS, "weight", "bmi"])
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
        e_and_m = _E_AND_M["office_new" if first else "office"]
        self._procedure(enc, t_dx, *e_and_m)
        if lab_keys:
            self._procedure(enc, t_labs, *_E_AND_M["venipuncture"])
        if annual and start.month in (9, 10, 11, 12):
            self._procedure(enc, t_orders, *_E_AND_M["flu"])
            plan.append("Health maintenance: influenza vaccine given today.")
        if annual and "t2dm" in self.diagnosed and rng.random() < 0.5:
            self._procedure(enc, t_orders, *_E_AND_M["retina"])
            plan.append("Diabetic retinal screening photographs taken today; no retinopathy on preliminary read.")
        if "copd" in new_keys:
            self._procedure(enc, t_orders, *_E_AND_M["spirometry"])

        t_note = start + timedelta(minutes=70)
        text = self._office_note(start, reason, vitals, labs, previous, plan, first=first, annual=annual)
        note = self._note(enc, t_note, "progress", text)
        for stop in self.stops:
            if stop.note is None:
                stop.note = note
        sbp_draft, dbp_draft = self.latest["sbp"][2], self.latest["dbp"][2]
        summary = self._office_summary(start, reason, vitals, labs, plan)
        self.office_visits.append(_OfficeFact(start, reason, summary, note, sbp_draft, dbp_draft))
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

    def _manage(self, enc: _EncounterDraft, when: datetime, new_keys: Sequence[str], vitals: dict[str, float],
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
            spec = _CONDITIONS[key]
            established = first and self.onset[key] == 0.0
            drugs = spec.established if established else spec.first_line
            if key == "hypertension" and "lisinopril" in self.stopped:
                drugs = ("losartan50",)
            started = []
            for drug_key in drugs:
                drug = _DRUGS[drug_key]
                if drug.ingredient in self.active and not established:
                    continue
                self._prescribe(enc, when, drug_key)
                self.active_since[drug.ingredient] = when
                started.append(f"{drug.ingredient} {drug.sig}")
            plan.append(self._dx_line(key, established, vitals, labs, started))

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

    def _dx_line(self, key: str, established: bool, vitals: dict[str, float], labs: dict[str, float],
                 started: list[str]) -> str:
        spec = _CONDITIONS[key]
        med = f" Continue {_join(started)}." if established and started else (
            f" Start {_join(started)}." if started else "")
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

    def _follow_line(self, enc: _EncounterDraft, key: str, when: datetime, vitals: dict[str, float],
                     labs: dict[str, float], latest: Callable[..., float | None]) -> str:
        spec = _CONDITIONS[key]
        since_change = (when - self.last_change.get(key, self.start)).days
        name = spec.name
        if key == "hypertension":
            bp = f"{vitals['sbp']:.0f}/{vitals['dbp']:.0f}"
            if "lisinopril" in self.active and self.traits["ace_cough"] and (
                when - self.active_since["lisinopril"]).days >= 90:
                self._stop("lisinopril", when, "a persistent dry cough attributed to lisinopril")
                self._prescribe(enc, when, "losartan50")
                self.last_change[key] = when
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
                step = self._bp_step()
                if step is not None:
                    old, new = step
                    self._prescribe(enc, when, new)
                    self.last_change[key] = when
                    drug = _DRUGS[new]
                    verb = f"Increase {drug.ingredient} to {drug.sig}" if old else f"Add {drug.ingredient} {drug.sig}"
                    return f"{name}: BP {bp}, above goal of 130/80. {verb}."
                return f"{name}: BP {bp}, above goal on maximal tolerated regimen; reinforced low-sodium diet."
            return f"{name}: BP {bp}, at goal. Continue current regimen."
        if key == "t2dm":
            a1c = latest("a1c", 100)
            a1c_text = f"hemoglobin A1c {a1c:.1f}%" if a1c is not None else "no recent A1c"
            if a1c is not None and a1c > 7.5 and since_change >= 120:
                step = self._diabetes_step()
                glargine = self.active.get("insulin glargine")
                if step is None and glargine is not None and self.glargine_units < 34:
                    self.glargine_units += 4
                    self._prescribe(enc, when, _titrated_glargine(self.glargine_units))
                    self.last_change[key] = when
                    return (f"Type 2 diabetes mellitus: {a1c_text}, above goal of 7%. Increase insulin glargine to "
                            f"{self.glargine_units} units at bedtime; review fasting glucose log.")
                if step is not None:
                    old, new = step
                    self._prescribe(enc, when, new)
                    self.last_change[key] = when
                    drug = _DRUGS[new]
                    verb = f"Increase {drug.ingredient} to {drug.sig}" if old else f"Add {drug.ingredient} {drug.sig}"
                    return f"Type 2 diabetes mellitus: {a1c_text}, above goal of 7%. {verb}."
            goal = "at goal" if a1c is not None and a1c <= 7.0 else "near goal" if a1c is not None else "due for A1c"
            return f"Type 2 diabetes mellitus: {a1c_text}, {goal}. Continue current regimen; foot care reviewed."
        if key == "hyperlipidemia":
            ldl = latest("ldl", 120)
            if ldl is not None and ldl > 100 and "atorvastatin" in self.active and \
                    self.active["atorvastatin"].key == "atorvastatin20" and since_change >= 180:
                self._prescribe(enc, when, "atorvastatin40")
                self.last_change[key] = when
                return f"{name}: LDL {ldl:.0f} mg/dL, above goal. Increase atorvastatin to 40 mg at bedtime."
            if ldl is not None:
                return f"{name}: LDL {ldl:.0f} mg/dL. Continue atorvastatin."
            return ""
        if key == "hypothyroidism":
            tsh = latest("tsh", 120)
            if tsh is not None and tsh > 4.5 and "levothyroxine" in self.active and \
                    self.active["levothyroxine"].key == "levothyroxine50" and since_change >= 60:
                self._prescribe(enc, when, "levothyroxine75")
                self.last_change[key] = when
                return f"{name}: TSH {tsh:.2f} mIU/L, still above range. Increase levothyroxine to 75 mcg daily."
            if tsh is not None:
                return f"{name}: TSH {tsh:.2f} mIU/L, clinically euthyroid. Continue levothyroxine."
            return ""
        if key == "ckd":
            egfr = latest("egfr", 200)
            text = f"eGFR {egfr:.0f} mL/min/1.73m2" if egfr is not None else "renal function stable"
            return f"{self._condition_code('ckd')[1]}: {text}. Avoid NSAIDs; continue blood pressure control."
        if key == "copd" and "tiotropium" not in self.active and any(
                s.problem.key == "copd_exacerbation" for s in self.stays):
            self._prescribe(enc, when, "tiotropium")
            self.last_change[key] = when
            return f"{name}: recent exacerbation. Start tiotropium inhaler once daily as maintenance."
        if self.rng.random() < 0.6:
            return f"{name}: stable. Continue current management."
        return ""

    def _bp_step(self) -> tuple[str | None, str] | None:
        active = self.active
        if "lisinopril" not in active and "losartan" not in active:
            return (None, "losartan50" if "lisinopril" in self.stopped else "lisinopril10")
        if active.get("lisinopril") is _DRUGS["lisinopril10"]:
            return ("lisinopril10", "lisinopril20")
        if "amlodipine" not in active:
            return (None, "amlodipine5")
        if active["amlodipine"] is _DRUGS["amlodipine5"]:
            return ("amlodipine5", "amlodipine10")
        if "hydrochlorothiazide" not in active and "hydrochlorothiazide" not in self.stopped:
            return (None, "hctz25")
        return None

    def _diabetes_step(self) -> tuple[str | None, str] | None:
        active = self.active
        if "metformin" not in active:
            return (None, "metformin500")
        if active["metformin"] is _DRUGS["metformin500"]:
            return ("metformin500", "metformin1000")
        if "glipizide" not in active and "glipizide" not in self.stopped:
            return (None, "glipizide5")
        if "empagliflozin" not in active and self.latest.get("egfr", (None, 90.0))[1] >= 30:
            return (None, "empagliflozin10")
        if "insulin glargine" not in active:
            return (None, "glargine")
        return None

    def _med_list(self) -> str:
        if not self.active:
            return "- None"
        return "\n".join(f"- {drug.name}: {drug.sig}" for drug in self.active.values())

    def _problem_phrase(self) -> str:
        labels = [_CONDITIONS[key].label for key in self.diagnosed]
        return _join(labels) if labels else "no chronic medical problems"

    def _results_text(self, labs: dict[str, float], previous: dict[str, tuple[datetime, float]]) -> list[str]:
        lines = []
        for key, value in labs.items():
            spec = _MEASURES[key]
            label = spec.label if spec.label[:2] == "eG" else spec.label[0].upper() + spec.label[1:]
            text = f"{label}: {spec.say(value)}"
            if key in previous and key in ("a1c", "creatinine", "ldl", "tsh", "hemoglobin", "egfr", "uacr"):
                then, old = previous[key]
                text += f" (previous {spec.say(old)} on {_day(then)})"
            lines.append(text)
        return lines

    def _office_note(self, start: datetime, reason: str, vitals: dict[str, float], labs: dict[str, float],
                     previous: dict[str, tuple[datetime, float]], plan: list[str], *, first: bool,
                     annual: bool) -> str:
        rng = self.rng
        woman = "woman" if self.female else "man"
        she = "She" if self.female else "He"
        her = "her" if self.female else "his"
        hpi = [f"{self.age(start)}-year-old {woman} with {self._problem_phrase()} who presents for {reason}."]
        hpi.append(rng.choice((
            f"{she} reports feeling generally well and denies chest pain, dyspnea or palpitations.",
            f"{she} has had more fatigue lately but no chest pain, fevers or weight loss.",
            f"{she} has been walking 20-30 minutes most days and is trying to limit salt and sweets.",
            f"{she} notes occasional headaches, no visual changes, no focal weakness.",
            f"{she} reports good energy, stable appetite and sleeping about seven hours a night.",
        )))
        if self.active:
            hpi.append(rng.choice((
                f"{she} takes {her} medications as prescribed and reports no side effects.",
                f"{she} occasionally misses evening doses; uses a pill organizer.",
                f"Medication adherence is good per {her} pharmacy fill history.",
            )))
        lines = [
            f"PROGRESS NOTE - {self.clinic}",
            f"Date of service: {_day(start)}",
            f"Provider: {self.pcp}",
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
        lines += ["CURRENT MEDICATIONS:", self._med_list(), ""]
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
            lines += ["RESULTS (drawn today):", *self._results_text(labs, previous), ""]
        lines += ["ASSESSMENT AND PLAN:"]
        lines += [f"{number}. {line}" for number, line in enumerate(plan, start=1)] or ["1. Routine follow-up."]
        lines += ["", f"Return to clinic in {rng.choice((3, 4, 6))} months, sooner if needed.", f"{self.pcp}"]
        return "\n".join(lines)

    def _office_summary(self, start: datetime, reason: str, vitals: dict[str, float], labs: dict[str, float],
                        plan: list[str]) -> str:
        parts = [f"Office visit on {_day(start)} for {reason}.",
                 f"BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f} mmHg, weight {vitals['weight']:.1f} kg."]
        key_labs = [f"{_MEASURES[k].label} {_MEASURES[k].say(v)}" for k, v in labs.items()
                    if k in ("a1c", "creatinine", "ldl", "tsh", "hemoglobin", "sodium")]
        if key_labs:
            parts.append("Labs: " + ", ".join(key_labs) + ".")
        if plan:
            parts.append("Plan: " + " ".join(plan))
        return " ".join(parts)

    # ------------------------------------------------------------------ lab-only visits

    def _lab_visit(self, start: datetime) -> datetime:
        enc = self._open("Laboratory Visit", start)
        enc.add(start, EventKind.visit, code="Visit/LAB", name="Laboratory Visit", value="Outpatient Laboratory")
        keys = self._labs_due(start, False, ())
        if not keys:
            keys = sorted({*_BMP, "a1c"} if self.rng.random() < 0.5 else {*_CBC, *_BMP}, key=list(_MEASURES).index)
        t_draw = start + timedelta(minutes=5)
        self._procedure(enc, t_draw, *_E_AND_M["venipuncture"])
        self._measure_into(enc, t_draw, keys)
        end = start + timedelta(minutes=20)
        self._close(enc, end)
        return end

    # ------------------------------------------------------------------ emergency visits and admissions

    def _pick_problem(self) -> _Acute:
        weights = []
        for problem in _ACUTE.values():
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
        return _ACUTE[self._weighted([w for w in weights if w[1] > 0])]

    def _emergency_visit(self, start: datetime) -> datetime:
        rng = self.rng
        problem = self._pick_problem()
        doctor = rng.choice(_EMERGENCY_DOCTORS)
        enc = self._open("Emergency Room Visit", start)
        enc.add(start, EventKind.visit, code="Visit/ER", name="Emergency Room Visit", value="Emergency Department")
        self.acute = (problem, 1.0)
        t_triage = start + timedelta(minutes=6)
        vitals = self._measure_into(enc, t_triage, _VITALS)
        diagnosis = self._condition(enc, start + timedelta(minutes=10), problem.code, problem.name)
        t_labs = start + timedelta(minutes=30)
        lab_keys = sorted({*_BMP, *_CBC, *_ACUTE_LABS.get(problem.key, ())}, key=list(_MEASURES).index)
        labs = self._measure_into(enc, t_labs, lab_keys)
        self._procedure(enc, start + timedelta(minutes=15), *_E_AND_M["ed"])
        for code, name in _ACUTE_PROCEDURES.get(problem.key, ())[:1]:
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
        if problem.key == "hypoglycemia" and "glipizide" in self.active:
            stop = self._stop("glipizide", start, "hypoglycemia requiring an emergency visit",
                              [self.latest["glucose"][2]])
            changes.append("Glipizide discontinued because of hypoglycemia.")
        else:
            stop = None
        t_note = start + timedelta(minutes=150)
        end = start + timedelta(minutes=rng.choice((200, 240, 270, 300)))
        if not admit:
            for drug_key in problem.discharge_drugs:
                self._prescribe(enc, t_note, drug_key, chronic=False)
            if problem.key == "new_afib":
                self._diagnose_from_stay("atrial_fibrillation", enc, t_note, changes)
        text = self._ed_note(start, problem, doctor, vitals, labs, impression, admit, changes)
        note = self._note(enc, t_note, "ed", text)
        if stop is not None:
            stop.note = note
        self._close(enc, end)
        self.acute = None
        if admit:
            return self._admission(end, problem, from_ed=(start, labs, impression))
        summary = (f"Emergency department visit on {_day(start)} for {problem.complaint}; diagnosed with "
                   f"{problem.label}. {self._labs_phrase(labs, problem)}"
                   + (f" Imaging: {impression}" if impression else "")
                   + f" Treated with {_join([_DRUGS[d].ingredient for d in problem.ed_drugs]) or 'supportive care'}"
                   + " and discharged home"
                   + (f" on {_join([_DRUGS[d].ingredient for d in problem.discharge_drugs])}."
                      if problem.discharge_drugs else ".")
                   + (" " + " ".join(changes) if changes else ""))
        self.stays.append(_Stay("emergency", start, end, problem, summary, diagnosis, note))
        return end

    def _diagnose_from_stay(self, key: str, enc: _EncounterDraft, when: datetime, changes: list[str]) -> None:
        if key in self.diagnosed:
            return
        self.onset.setdefault(key, self.progress)
        self.diagnosed[key] = when
        self.last_change[key] = when
        spec = _CONDITIONS[key]
        self._condition(enc, when, spec.code, spec.name)
        started = []
        for drug_key in spec.first_line:
            if _DRUGS[drug_key].ingredient not in self.active:
                self._prescribe(enc, when, drug_key)
                started.append(_DRUGS[drug_key].ingredient)
        if started:
            changes.append(f"New {spec.label}: started {_join(started)}.")

    def _labs_phrase(self, labs: dict[str, float], problem: _Acute) -> str:
        focus = {
            "pneumonia": ("wbc",), "copd_exacerbation": ("wbc",), "chf_exacerbation": ("bnp", "creatinine"),
            "aki": ("creatinine", "potassium"), "uti": ("wbc",), "cellulitis": ("wbc",),
            "chest_pain": ("troponin",), "syncope": ("troponin", "hemoglobin"), "hypoglycemia": ("glucose",),
            "gi_bleed": ("hemoglobin", "bun"), "ankle_sprain": (), "new_afib": ("tsh", "troponin"),
            "knee_replacement": ("hemoglobin",),
        }[problem.key]
        parts = [f"{_MEASURES[k].label} {_MEASURES[k].say(labs[k])}" for k in focus if k in labs]
        return ("Key results: " + ", ".join(parts) + ".") if parts else ""

    def _imaging(self, enc: _EncounterDraft, when: datetime, problem: _Acute) -> str:
        study = _IMAGING[problem.imaging]  # type: ignore[index]
        self._procedure(enc, when, study.code, study.name)
        impression = problem.finding or study.normal
        report = "\n".join([
            f"RADIOLOGY REPORT: {study.title}",
            f"Exam date: {_day(when)}",
            f"Indication: {problem.complaint}.",
            f"Technique: {study.technique}",
            "Comparison: " + ("prior studies in the record" if len(self.stays) else "none available"),
            f"Findings: {impression}",
            f"IMPRESSION: {impression}",
            f"Electronically signed by {self.rng.choice(_RADIOLOGISTS)}",
        ])
        self._note(enc, when + timedelta(minutes=40), "radiology", report)
        return impression

    def _ed_note(self, start: datetime, problem: _Acute, doctor: str, vitals: dict[str, float],
                 labs: dict[str, float], impression: str, admit: bool, changes: list[str]) -> str:
        woman = "woman" if self.female else "man"
        she = "She" if self.female else "He"
        lines = [
            "EMERGENCY DEPARTMENT PROVIDER NOTE",
            f"Arrival: {start.strftime('%Y-%m-%d %H:%M')}    Provider: {doctor}",
            "",
            f"CHIEF COMPLAINT: {problem.complaint}",
            "",
            "HISTORY OF PRESENT ILLNESS:",
            f"{self.age(start)}-year-old {woman} with {self._problem_phrase()} presenting with {problem.complaint}. "
            + self.rng.choice((
                f"{she} denies recent travel or sick contacts.",
                f"{she} tried over-the-counter remedies without relief.",
                f"Symptoms began gradually and worsened today, prompting the visit.",
            )),
            "",
            "HOME MEDICATIONS:",
            self._med_list(),
            "",
            "TRIAGE VITALS: "
            f"BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f}, HR {vitals['hr']:.0f}, RR {vitals['rr']:.0f}, "
            f"Temp {vitals['temp']:.1f} C, SpO2 {vitals['spo2']:.0f}%.",
            "",
            "RESULTS: " + "; ".join(f"{_MEASURES[k].label} {_MEASURES[k].say(v)}" for k, v in labs.items()) + ".",
        ]
        if impression:
            lines.append(f"IMAGING: {impression}")
        treatments = _join([f"{_DRUGS[d].ingredient} {_DRUGS[d].sig}" for d in problem.ed_drugs])
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

    def _admission(self, start: datetime, problem: _Acute,
                   from_ed: tuple[datetime, dict[str, float], str] | None) -> datetime:
        rng = self.rng
        hospitalist = rng.choice(_HOSPITALISTS)
        stay_days = rng.randint(*problem.stay_days)
        enc = self._open("Inpatient Visit", start)
        enc.add(start, EventKind.visit, code="Visit/IP", name="Inpatient Visit",
                value="Orthopedic Surgery Ward" if problem.key == "knee_replacement" else "General Medicine Ward")
        t0 = start + timedelta(minutes=30)
        diagnosis = self._condition(enc, t0, problem.code, problem.name)
        for key in self.diagnosed:
            if _CONDITIONS[key].code != problem.code:
                self._condition(enc, t0, *self._condition_code(key))
        self._procedure(enc, t0, *_E_AND_M["admit"])
        self.acute = (problem, 1.0)
        admit_vitals = self._measure_into(enc, start + timedelta(minutes=20), _VITALS)
        first_labs: dict[str, float] = from_ed[1] if from_ed else {}
        impression = from_ed[2] if from_ed else ""
        if not from_ed:
            first_labs = self._measure_into(enc, start + timedelta(minutes=40), [*_BMP, *_CBC])
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
        for code, name in _ACUTE_PROCEDURES.get(problem.key, ()):
            if code == "CPT4/93000" and from_ed:
                continue
            self._procedure(enc, start + timedelta(hours=3), code, name)
            procedures_done.append(name.split(";")[0].split(",")[0].lower())
        if problem.key == "knee_replacement":
            impression = self._imaging(enc, start + timedelta(hours=6), problem)
            op_note = (f"OPERATIVE NOTE\nDate: {_day(start)}\nProcedure: right total knee arthroplasty.\n"
                       "Anesthesia: spinal with adductor canal block. Estimated blood loss: 200 mL.\n"
                       "Findings: tricompartmental osteoarthritis, worst in the medial compartment.\n"
                       "Implants: cemented posterior-stabilized components. No complications.")
            self._note(enc, start + timedelta(hours=4), "procedure", op_note)
        elif problem.key == "gi_bleed":
            egd = (f"PROCEDURE NOTE: ESOPHAGOGASTRODUODENOSCOPY\nDate: {_day(start)}\nIndication: melena and anemia.\n"
                   "Findings: 8 mm clean-based duodenal bulb ulcer without visible vessel. Biopsies taken for "
                   "H. pylori.\nPlan: high-dose proton pump inhibitor, avoid NSAIDs.")
            self._note(enc, start + timedelta(hours=5), "procedure", egd)
        elif problem.key == "chf_exacerbation" and rng.random() < 0.6:
            echo = _IMAGING["echo"]
            self._procedure(enc, start + timedelta(hours=20), echo.code, echo.name)
            self._note(enc, start + timedelta(hours=21), "radiology",
                       f"RADIOLOGY REPORT: {echo.title}\nExam date: {_day(start + timedelta(hours=20))}\n"
                       "Findings: dilated left ventricle with global hypokinesis, LVEF 30-35%. Moderate mitral "
                       "regurgitation. Estimated RVSP 45 mmHg.\nIMPRESSION: reduced systolic function, unchanged "
                       "from prior.")
        hp = self._hp_note(start, problem, hospitalist, admit_vitals, first_labs, impression, held)
        self._note(enc, start + timedelta(minutes=90), "hp", hp)

        peak: dict[str, float] = dict(first_labs)
        trough: dict[str, float] = dict(first_labs)
        last_labs = first_labs
        discharge_day = (start + timedelta(days=stay_days)).date()
        for day_index in range(1, stay_days + 1):
            day = (start + timedelta(days=day_index)).date()
            severity = max(0.05, 1.0 - day_index / (stay_days + 0.5))
            self.acute = (problem, severity)
            last_labs = self._measure_into(enc, _clock(day, 5, 30), [*_BMP, *_CBC])
            for key, value in last_labs.items():
                peak[key] = max(peak.get(key, value), value)
                trough[key] = min(trough.get(key, value), value)
            vitals_times = ((8, 0),) if day == discharge_day else ((0, 0), (8, 0), (16, 0))
            for hour, minute in vitals_times:
                self._measure_into(enc, _clock(day, hour, minute), _VITALS)
            if day != discharge_day:
                self._procedure(enc, _clock(day, 9, 45), *_E_AND_M["daily"])
                self._note(enc, _clock(day, 10, 15), "inpatient_progress",
                           self._ward_note(day, day_index, problem, hospitalist, last_labs, severity))
        end = _clock(discharge_day, rng.randint(11, 15), rng.choice((0, 20, 40)))
        changes: list[str] = []
        for drug_key in problem.discharge_drugs:
            self._prescribe(enc, end - timedelta(minutes=30), drug_key, chronic=False)
        if problem.key == "new_afib":
            self._diagnose_from_stay("atrial_fibrillation", enc, end - timedelta(minutes=30), changes)
        if problem.key == "hypoglycemia" and "glipizide" in self.active:
            stop = self._stop("glipizide", start, "hypoglycemia requiring hospital admission",
                              [self.latest["glucose"][2]])
            changes.append("Glipizide discontinued because of hypoglycemia.")
        else:
            stop = None
        if problem.key == "gi_bleed":
            self.bleed_at = end
        self._procedure(enc, end - timedelta(minutes=20), *_E_AND_M["discharge"])
        summary_text = self._discharge_summary(start, end, problem, hospitalist, first_labs, last_labs, peak,
                                               trough, impression, held, procedures_done, changes)
        note = self._note(enc, end - timedelta(minutes=10), "discharge", summary_text)
        if stop is not None:
            stop.note = note
        self.acute = None
        self._close(enc, end)
        discharge_meds = [_DRUGS[d].ingredient for d in problem.discharge_drugs]
        days = f"{stay_days} day{'s' if stay_days != 1 else ''}"
        parts = [
            f"Admitted {_day(start)} to {_day(end)} ({days}) for {problem.label}"
            + (f" after presenting with {problem.complaint}." if from_ed else "."),
            f"Hospital course: {problem.course}." if problem.course else "",
            f"Imaging: {impression}" if impression and problem.finding else "",
            self._course_numbers(problem, first_labs, peak, trough, last_labs),
            f"Held during the stay: {_join(held)}." if held else "",
            *changes,
            "Discharged home" + (f" on {_join(discharge_meds)}." if discharge_meds else "."),
        ]
        answer = " ".join(part for part in parts if part)
        self.stays.append(_Stay("admission", start, end, problem, answer, diagnosis, note))
        return end

    def _course_numbers(self, problem: _Acute, first: dict[str, float], peak: dict[str, float],
                        trough: dict[str, float], last: dict[str, float]) -> str:
        def say(key: str, value: float) -> str:
            return _MEASURES[key].say(value)

        if problem.key in ("pneumonia", "uti", "cellulitis", "copd_exacerbation") and "wbc" in peak:
            return f"WBC peaked at {say('wbc', peak['wbc'])} and was {say('wbc', last['wbc'])} at discharge."
        if problem.key in ("aki", "chf_exacerbation") and "creatinine" in peak:
            return (f"Creatinine peaked at {say('creatinine', peak['creatinine'])} and was "
                    f"{say('creatinine', last['creatinine'])} at discharge.")
        if problem.key in ("gi_bleed", "knee_replacement") and "hemoglobin" in trough:
            return (f"Hemoglobin nadir {say('hemoglobin', trough['hemoglobin'])}, "
                    f"{say('hemoglobin', last['hemoglobin'])} at discharge.")
        return ""

    def _hp_note(self, start: datetime, problem: _Acute, doctor: str, vitals: dict[str, float],
                 labs: dict[str, float], impression: str, held: list[str]) -> str:
        woman = "woman" if self.female else "man"
        lines = [
            "HISTORY AND PHYSICAL - ADMISSION",
            f"Admission date: {_day(start)}    Attending: {doctor}",
            "",
            f"CHIEF COMPLAINT: {problem.complaint}",
            "",
            "HISTORY OF PRESENT ILLNESS:",
            f"{self.age(start)}-year-old {woman} with {self._problem_phrase()} admitted for {problem.label}. "
            + self.rng.choice((
                "Symptoms progressed over several days despite outpatient measures.",
                "The patient was seen in the emergency department and could not be safely discharged.",
                "Family reports declining oral intake and reduced activity over the past week.",
            )),
            "",
            "PAST MEDICAL HISTORY: " + (", ".join(_CONDITIONS[k].name for k in self.diagnosed) or "none"),
            "",
            "HOME MEDICATIONS:",
            self._med_list(),
            "",
            f"ADMISSION VITALS: BP {vitals['sbp']:.0f}/{vitals['dbp']:.0f}, HR {vitals['hr']:.0f}, "
            f"RR {vitals['rr']:.0f}, Temp {vitals['temp']:.1f} C, SpO2 {vitals['spo2']:.0f}%.",
        ]
        if labs:
            lines.append("ADMISSION LABS: " + "; ".join(f"{_MEASURES[k].label} {_MEASURES[k].say(v)}"
                                                       for k, v in labs.items()) + ".")
        if impression:
            lines.append(f"IMAGING: {impression}")
        lines += [
            "",
            "ASSESSMENT AND PLAN:",
            f"1. {problem.name}: " + (_join([f"{_DRUGS[d].ingredient} {_DRUGS[d].sig}" for d in problem.ward_drugs])
                                       or "supportive care, monitoring") + ".",
        ]
        if held:
            lines.append(f"2. Holding {_join(held)} for now.")
        lines.append("DVT prophylaxis, code status full code, dispo pending clinical improvement.")
        return "\n".join(lines)

    def _ward_note(self, day: date, day_index: int, problem: _Acute, doctor: str, labs: dict[str, float],
                   severity: float) -> str:
        trend = "improving" if severity < 0.7 else "slowly improving"
        key_labs = "; ".join(f"{_MEASURES[k].label} {_MEASURES[k].say(v)}" for k, v in labs.items()
                             if k in ("creatinine", "potassium", "sodium", "wbc", "hemoglobin", "glucose"))
        return "\n".join([
            f"HOSPITAL PROGRESS NOTE - hospital day {day_index + 1}",
            f"Date: {day.isoformat()}    Attending: {doctor}",
            "Subjective: " + self.rng.choice((
                "Slept well overnight.", "Some fatigue, appetite improving.", "No new complaints overnight.",
                "Ambulated in the hallway with nursing.",
            )),
            f"Labs this morning: {key_labs}.",
            f"Assessment: {problem.label}, {trend}.",
            f"Plan: continue {_join([_DRUGS[d].ingredient for d in problem.ward_drugs]) or 'current management'}; "
            "monitor labs and vitals; discharge planning.",
        ])

    def _discharge_summary(self, start: datetime, end: datetime, problem: _Acute, doctor: str,
                           first: dict[str, float], last: dict[str, float], peak: dict[str, float],
                           trough: dict[str, float], impression: str, held: list[str], procedures: list[str],
                           changes: list[str]) -> str:
        secondary = [_CONDITIONS[k].name for k in self.diagnosed if _CONDITIONS[k].code != problem.code]
        discharge_meds = [f"- {_DRUGS[d].name}: {_DRUGS[d].sig} (new)" for d in problem.discharge_drugs]
        discharge_meds += [f"- {drug.name}: {drug.sig}" for drug in self.active.values()]
        lines = [
            "DISCHARGE SUMMARY",
            f"Admission date: {_day(start)}",
            f"Discharge date: {_day(end)}",
            f"Attending: {doctor}",
            "",
            f"PRINCIPAL DIAGNOSIS: {problem.name} ({problem.code.split('/')[1]})",
            "SECONDARY DIAGNOSES: " + ("; ".join(secondary) if secondary else "none"),
            "",
            "HOSPITAL COURSE:",
            f"The patient was admitted with {problem.complaint} and found to have {problem.label}. "
            + (f"The patient was {problem.course}. " if problem.course else "")
            + " ".join(part for part in [
                self._course_numbers(problem, first, peak, trough, last),
                f"{_join(held).capitalize()} held during the stay and resumed at discharge." if held else "",
                *changes,
            ] if part),
        ]
        if procedures:
            lines.append("PROCEDURES: " + "; ".join(procedures) + ".")
        if impression:
            lines.append(f"IMAGING: {impression}")
        lines += [
            "",
            "DISCHARGE LABS: " + "; ".join(f"{_MEASURES[k].label} {_MEASURES[k].say(v)}" for k, v in last.items()
                                           if k in ("creatinine", "potassium", "sodium", "wbc", "hemoglobin")) + ".",
            "",
            "DISCHARGE MEDICATIONS:",
            *(discharge_meds or ["- None"]),
            "",
            "DISPOSITION: home. Follow up with primary care within 7 days.",
        ]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ token positions


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
    event_lines = [index for index, line in enumerate(lines) if line.startswith("      <event ")]
    event_ids = [event.event_id for _, event in record.iter_events()]
    if len(event_lines) != len(event_ids):
        raise MedalignError(
            f"rendered record has {len(event_lines)} event lines for {len(event_ids)} events", path=record.patient_id
        )
    total = counter.count(text)
    scale = total / suffix[0] if suffix[0] else 0.0
    return total, {eid: round(suffix[line] * scale) for eid, line in zip(event_ids, event_lines)}


# ----------------------------------------------------------------------------------------------- instructions


@dataclass
class _Candidate:
    template: str
    category: str  # MedAlign taxonomy subcategory
    question: str
    answer: str
    evidence: list[str]
    anchor: datetime
    details: dict = field(default_factory=dict)


_TAXONOMY_GROUP = "information retrieval"  # every template here retrieves and summarizes


class _InstructionWriter:
    """Clinician-style instructions with answers and evidence read off the finished record."""

    def __init__(self, sim: _Simulator, record: PatientRecord, rng: random.Random) -> None:
        self.sim = sim
        self.record = record
        self.rng = rng
        self.events = [event for _, event in record.iter_events()]
        self.position = {event.event_id: index for index, event in enumerate(self.events)}
        self.end = record.last_timestamp or sim.start

    # ------------------------------------------------------------------ helpers

    def _series(self, code: str, until: datetime | None = None) -> list[Event]:
        return [ev for ev in self.events if ev.code == code and (until is None or ev.timestamp <= until)]

    def _old_part(self, items: list, share: float = 0.5) -> list:
        """The older `share` of items (at least one), which a context cut from the front is likely to lose."""
        return items[: max(1, int(len(items) * share))]

    # ------------------------------------------------------------------ templates

    def most_recent(self, key: str, anchor: datetime | None = None) -> _Candidate | None:
        spec = _MEASURES[key]
        anchor = anchor or self.end
        series = self._series(spec.code, anchor)
        if not series:
            return None
        last = series[-1]
        return _Candidate(
            "most_recent_value", "retrieve laboratory studies", f"What was the most recent {spec.label}?",
            f"{spec.say(float(last.value))} on {_day(last.timestamp)}", [last.event_id], anchor,
            {"code": spec.code, "value": last.value, "unit": last.unit, "date": _day(last.timestamp)},
        )

    def earlier_most_recent(self, key: str) -> _Candidate | None:
        """The same question asked at an earlier time: the answer is the latest value as of that anchor."""
        spec = _MEASURES[key]
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

    def value_on_date(self, key: str) -> _Candidate | None:
        spec = _MEASURES[key]
        series = self._series(spec.code)
        per_day: dict[str, int] = {}
        for ev in series:
            per_day[_day(ev.timestamp)] = per_day.get(_day(ev.timestamp), 0) + 1
        unique = [ev for ev in series if per_day[_day(ev.timestamp)] == 1]
        if not unique:
            return None
        pick = self.rng.choice(self._old_part(unique, 0.5))
        return _Candidate(
            "value_on_date", "retrieve laboratory studies",
            f"What was the patient's {spec.label} on {_day(pick.timestamp)}?", spec.say(float(pick.value)),
            [pick.event_id], self.end,
            {"code": spec.code, "value": pick.value, "unit": pick.unit, "date": _day(pick.timestamp)},
        )

    def first_value(self, key: str) -> _Candidate | None:
        spec = _MEASURES[key]
        series = self._series(spec.code)
        if not series:
            return None
        first = series[0]
        return _Candidate(
            "first_value", "retrieve laboratory studies",
            f"What was the patient's first recorded {spec.label}, and when was it measured?",
            f"{spec.say(float(first.value))} on {_day(first.timestamp)}", [first.event_id], self.end,
            {"code": spec.code, "value": first.value, "unit": first.unit, "date": _day(first.timestamp)},
        )

    def first_diagnosis(self, key: str) -> _Candidate | None:
        spec = _CONDITIONS[key]
        matches = [ev for ev in self.events if ev.kind is EventKind.condition and ev.code
                   and (ev.code == spec.family or ev.code.startswith(spec.family + "."))]
        if not matches:
            return None
        first = matches[0]
        developed = self.sim.onset.get(key, 0.0) > 0.0
        question = (f"When was {spec.label} first diagnosed?" if developed
                    else f"When was {spec.label} first documented in the record?")
        return _Candidate(
            "first_diagnosis", "retrieve medical history", question,
            f"{_day(first.timestamp)} ({first.name}, {first.code.split('/')[1]})", [first.event_id], self.end,
            {"code": first.code, "date": _day(first.timestamp), "developed_in_record": developed},
        )

    def visit_count(self) -> _Candidate | None:
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
        dates = [_day(ev.timestamp) for ev in inside]
        noun = words if len(inside) != 1 else words[:-1]
        return _Candidate(
            "count_visits", "retrieve appointment information",
            f"How many {words} did the patient have between {low.isoformat()} and {high.isoformat()}?",
            f"{len(inside)} {noun} ({', '.join(dates)})", [ev.event_id for ev in inside], self.end,
            {"visit_code": code, "count": len(inside), "start": low.isoformat(), "end": high.isoformat()},
        )

    def medication_history(self, key: str) -> _Candidate | None:
        spec = _CONDITIONS[key]
        firsts: dict[str, Event] = {}
        for ev in self.events:
            drug = _DRUG_BY_CODE.get(ev.code or "") if ev.kind is EventKind.drug else None
            if drug is not None and key in drug.treats and drug.ingredient not in firsts:
                firsts[drug.ingredient] = ev
        if not firsts:
            return None
        parts = [f"{ev.name} (first prescribed {_day(ev.timestamp)})" for ev in firsts.values()]
        return _Candidate(
            "medication_history", "retrieve medication information",
            f"Which medications has the patient been prescribed for {spec.med_label}, and when were they started?",
            "; ".join(parts) + ".", [ev.event_id for ev in firsts.values()], self.end,
            {"condition": key, "ingredients": list(firsts), "starts": [_day(ev.timestamp) for ev in firsts.values()]},
        )

    def stay_summary(self) -> _Candidate | None:
        admissions = [stay for stay in self.sim.stays if stay.kind == "admission"]
        stays = admissions or self.sim.stays
        if not stays:
            return None
        stay = stays[0] if self.rng.random() < 0.5 else self.rng.choice(stays)
        what = "admission" if stay.kind == "admission" else "emergency department visit"
        return _Candidate(
            "summarize_stay", "retrieve medical history", f"Summarize the {what} of {_day(stay.start)}.",
            stay.summary, [stay.diagnosis.event_id, stay.note.event_id], self.end,
            {"stay": stay.kind, "start": _day(stay.start), "end": _day(stay.end), "diagnosis": stay.problem.code},
        )

    def office_summary(self) -> _Candidate | None:
        visits = self.sim.office_visits
        if not visits:
            return None
        visit = self.rng.choice(self._old_part(visits, 0.5))
        return _Candidate(
            "summarize_visit", "retrieve medical history", f"Summarize the office visit of {_day(visit.start)}.",
            visit.summary, [visit.note.event_id], self.end, {"date": _day(visit.start)},
        )

    def blood_pressure(self) -> _Candidate | None:
        visits = self.sim.office_visits
        if not visits:
            return None
        visit = self.rng.choice(self._old_part(visits, 0.5))
        return _Candidate(
            "vitals_on_date", "retrieve vitals",
            f"What was the patient's blood pressure at the office visit on {_day(visit.start)}?",
            f"{visit.sbp.value}/{visit.dbp.value} mmHg", [visit.sbp.event_id, visit.dbp.event_id], self.end,
            {"systolic": visit.sbp.value, "diastolic": visit.dbp.value, "date": _day(visit.start)},
        )

    def stop_reason(self) -> _Candidate | None:
        stops = [stop for stop in self.sim.stops if stop.note is not None]
        if not stops:
            return None
        stop = self.rng.choice(stops)
        evidence = [stop.note.event_id, *(draft.event_id for draft in stop.support)]  # type: ignore[union-attr]
        return _Candidate(
            "medication_stopped", "retrieve medication information",
            f"Why was {stop.ingredient} stopped, and when?",
            f"{stop.ingredient.capitalize()} was stopped on {_day(stop.when)} because of {stop.reason}.",
            evidence, self.end, {"ingredient": stop.ingredient, "date": _day(stop.when)},
        )

    # ------------------------------------------------------------------ selection

    def write(self) -> list[_Candidate]:
        rng = self.rng
        sim = self.sim
        wanted = rng.randint(6, 10)
        chosen: list[_Candidate] = []
        a1c = self.most_recent("a1c")
        if a1c is not None:
            chosen.append(a1c)

        lab_choices = [key for key in ("creatinine", "potassium", "sodium", "hemoglobin", "glucose", "ldl", "tsh",
                                       "a1c") if self._series(_MEASURES[key].code)]
        developed = [key for key in sim.diagnosed if sim.onset.get(key, 0.0) > 0.0]
        conditions = developed or list(sim.diagnosed)
        treated = [key for key in sim.diagnosed if any(key in d.treats for d in _DRUGS.values())]
        pick = rng.choice
        makers: list[Callable[[], _Candidate | None]] = [
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


# ----------------------------------------------------------------------------------------------- public API


class PatientSummary(BaseModel):
    patient_id: str
    length_tier: str
    n_encounters: int
    n_events: int
    n_notes: int
    n_tokens: int
    n_instructions: int
    first_timestamp: datetime | None = None
    last_timestamp: datetime | None = None


class CohortSummary(BaseModel):
    """What `generate_cohort` wrote: per-patient sizes and where the gold evidence sits."""

    out_dir: str
    seed: int
    token_counter: str
    patients: list[PatientSummary] = Field(default_factory=list)
    n_instructions: int = 0
    # metadata["evidence_depth"] of every instruction, in file order (1.0 = evidence at the record's start)
    evidence_depths: list[float] = Field(default_factory=list)

    def n_patients_over(self, tokens: int) -> int:
        return sum(1 for patient in self.patients if patient.n_tokens > tokens)

    def share_of_evidence_beyond(self, tokens: int, instructions: Sequence[Instruction]) -> float:
        """Share of instructions whose oldest evidence lies further than `tokens` from the record's end."""
        if not instructions:
            return 0.0
        far = sum(1 for item in instructions if item.metadata.get("evidence_tokens_from_end", 0) > tokens)
        return far / len(instructions)


@dataclass
class SyntheticPatient:
    record: PatientRecord
    instructions: list[Instruction]
    length_tier: str
    n_tokens: int


def _generate(rng: random.Random, patient_id: str, tier: str, counter: TokenCounter) -> SyntheticPatient:
    check_patient_id(patient_id)
    if tier not in LENGTH_TIERS:
        raise MedalignError(f"unknown length tier {tier!r}; expected one of {', '.join(LENGTH_TIERS)}")
    sim = _Simulator(rng, patient_id, tier)
    record = sim.run()
    total, from_end = evidence_depths(record, counter)
    writer = _InstructionWriter(sim, record, rng)
    instructions = []
    for number, candidate in enumerate(writer.write(), start=1):
        oldest = max(from_end[eid] for eid in candidate.evidence)
        newest = min(from_end[eid] for eid in candidate.evidence)
        metadata = {
            "template": candidate.template,
            "taxonomy_category": _TAXONOMY_GROUP,
            "anchor": "record_end" if candidate.anchor == writer.end else "earlier",
            "record_tokens": total,
            "evidence_tokens_from_end": oldest,
            "newest_evidence_tokens_from_end": newest,
            "evidence_depth": round(oldest / total, 4) if total else 0.0,
            **candidate.details,
        }
        instructions.append(
            Instruction(
                instruction_id=f"{patient_id}-i{number:02d}",
                patient_id=patient_id,
                question=candidate.question,
                reference_answers=[candidate.answer],
                time_anchor=candidate.anchor,
                evidence_event_ids=candidate.evidence,
                category=candidate.category,
                metadata=metadata,
            )
        )
    return SyntheticPatient(record=record, instructions=instructions, length_tier=tier, n_tokens=total)


def generate_patient(
    rng: random.Random,
    patient_id: str,
    *,
    length_tier: str | None = None,
    counter: TokenCounter | None = None,
) -> tuple[PatientRecord, list[Instruction]]:
    """One synthetic patient and 6-10 instructions about them, drawn from `rng` alone.

    `length_tier` ("short", "medium", "long", "very_long") sets the record's target length; by default it is
    drawn from `rng` with the cohort's shares.
    """
    if length_tier is None:
        length_tier = rng.choices([name for name, _ in _TIER_SHARES], weights=[share for _, share in _TIER_SHARES])[0]
    patient = _generate(rng, patient_id, length_tier, counter or default_counter())
    return patient.record, patient.instructions


def _patient_rng(seed: int, index: int) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"medalign-rag-synthetic:{seed}:{index}")


def generate_cohort(
    out_dir: Path,
    n_patients: int = 20,
    seed: int = 7,
    progress: bool = False,
    *,
    counter: TokenCounter | None = None,
) -> CohortSummary:
    """Write a synthetic cohort in MedAlign's release layout and return what was written.

    `out_dir/ehrs/synth-0001.xml ...` (release XML with event ids) and `out_dir/clinician-instruction-responses.tsv`
    (one row per reference answer, with time anchor, evidence event ids, category and metadata). The same
    `n_patients` and `seed` always give byte-identical files. Files of other patients already in `out_dir/ehrs`
    are left alone.
    """
    from medalign_rag.records.instructions import write_instruction_table

    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise MedalignError(f"n_patients must be a positive whole number, got {n_patients!r}", path=out_dir)
    if n_patients > 9999:
        raise MedalignError(f"n_patients must be at most 9999 (ids are synth-0001..synth-9999), got {n_patients}",
                            path=out_dir)
    counter = counter or default_counter()
    out_dir = Path(out_dir)
    ehr_dir = out_dir / "ehrs"
    try:
        ehr_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MedalignError(f"cannot create the output folder: {error}", path=ehr_dir) from error

    tiers = _assign_tiers(n_patients, random.Random(f"medalign-rag-synthetic-tiers:{seed}"))
    summary = CohortSummary(out_dir=str(out_dir), seed=seed, token_counter=counter.name)
    all_instructions: list[Instruction] = []
    for index, tier in enumerate(tiers):
        patient_id = check_patient_id(f"synth-{index + 1:04d}")
        patient = _generate(_patient_rng(seed, index), patient_id, tier, counter)
        write_release_xml(patient.record, ehr_dir / f"{patient_id}.xml")
        all_instructions.extend(patient.instructions)
        record = patient.record
        stamps = [ev.timestamp for _, ev in record.iter_events()]
        summary.patients.append(
            PatientSummary(
                patient_id=patient_id,
                length_tier=tier,
                n_encounters=len(record.encounters),
                n_events=record.n_events,
                n_notes=record.n_notes,
                n_tokens=patient.n_tokens,
                n_instructions=len(patient.instructions),
                first_timestamp=min(stamps) if stamps else None,
                last_timestamp=max(stamps) if stamps else None,
            )
        )
        if progress:
            print(f"[{index + 1}/{n_patients}] {patient_id}: {tier}, {len(record.encounters)} encounters, "
                  f"{record.n_events} events, {patient.n_tokens} tokens, {len(patient.instructions)} instructions",
                  file=sys.stderr, flush=True)
    write_instruction_table(all_instructions, out_dir / INSTRUCTIONS_FILENAME)
    summary.n_instructions = len(all_instructions)
    summary.evidence_depths = [float(item.metadata["evidence_depth"]) for item in all_instructions]
    return summary
