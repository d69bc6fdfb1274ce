"""The synthetic cohort's data tables: measures, drugs, conditions, acute problems, clinicians and length tiers.

Codes and names follow the vocabularies MedAlign's release uses (LOINC, RxNorm, ICD-10-CM, CPT-4); the numbers
attached to them (drug effects, condition weights, tier sizes) steer the simulation in `simulator.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Measure:
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


MEASURES: dict[str, Measure] = {
    m.key: m
    for m in [
        # vitals
        Measure("sbp", "LOINC/8480-6", "Systolic blood pressure", "mm[Hg]", 0, "systolic blood pressure", "mmHg"),
        Measure("dbp", "LOINC/8462-4", "Diastolic blood pressure", "mm[Hg]", 0, "diastolic blood pressure", "mmHg"),
        Measure("hr", "LOINC/8867-4", "Heart rate", "/min", 0, "heart rate", "/min"),
        Measure("rr", "LOINC/9279-1", "Respiratory rate", "/min", 0, "respiratory rate", "/min"),
        Measure("temp", "LOINC/8310-5", "Body temperature", "Cel", 1, "temperature", "C"),
        Measure("spo2", "LOINC/59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0,
                 "oxygen saturation", "%"),
        Measure("weight", "LOINC/29463-7", "Body weight", "kg", 1, "weight", "kg"),
        Measure("bmi", "LOINC/39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 1, "BMI", "kg/m2"),
        # labs
        Measure("a1c", "LOINC/4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1, "hemoglobin A1c", "%"),
        Measure("glucose", "LOINC/2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 0, "glucose",
                 "mg/dL"),
        Measure("sodium", "LOINC/2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 0, "sodium",
                 "mmol/L"),
        Measure("potassium", "LOINC/2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1,
                 "potassium", "mmol/L"),
        Measure("chloride", "LOINC/2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 0, "chloride",
                 "mmol/L"),
        Measure("co2", "LOINC/2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "mmol/L", 0,
                 "bicarbonate", "mmol/L"),
        Measure("bun", "LOINC/3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 0, "BUN",
                 "mg/dL"),
        Measure("creatinine", "LOINC/2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 2,
                 "creatinine", "mg/dL"),
        Measure("egfr", "LOINC/62238-1",
                 "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
                 "Creatinine-based formula (CKD-EPI)", "mL/min/{1.73_m2}", 0, "eGFR", "mL/min/1.73m2"),
        Measure("calcium", "LOINC/17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 1, "calcium",
                 "mg/dL"),
        Measure("wbc", "LOINC/6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 1,
                 "white blood cell count", "K/uL"),
        Measure("hemoglobin", "LOINC/718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1, "hemoglobin", "g/dL"),
        Measure("platelets", "LOINC/777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 0,
                 "platelet count", "K/uL"),
        Measure("cholesterol", "LOINC/2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "total cholesterol", "mg/dL"),
        Measure("hdl", "LOINC/2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "HDL cholesterol", "mg/dL"),
        Measure("ldl", "LOINC/13457-7", "Cholesterol in LDL [Mass/volume] in Serum or Plasma by calculation",
                 "mg/dL", 0, "LDL cholesterol", "mg/dL"),
        Measure("triglycerides", "LOINC/2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", 0,
                 "triglycerides", "mg/dL"),
        Measure("tsh", "LOINC/3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", 2, "TSH",
                 "mIU/L"),
        Measure("uacr", "LOINC/9318-7", "Albumin/Creatinine [Mass Ratio] in Urine", "mg/g{creat}", 0,
                 "urine albumin-to-creatinine ratio", "mg/g"),
        Measure("troponin", "LOINC/10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", 2,
                 "troponin I", "ng/mL"),
        Measure("bnp", "LOINC/30934-4", "Natriuretic peptide B [Mass/volume] in Serum or Plasma", "pg/mL", 0, "BNP",
                 "pg/mL"),
        Measure("inr", "LOINC/6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 1, "INR", ""),
    ]
}
VITALS = ("sbp", "dbp", "hr", "rr", "temp", "spo2")
BMP = ("sodium", "potassium", "chloride", "co2", "bun", "creatinine", "glucose", "calcium", "egfr")
CBC = ("wbc", "hemoglobin", "platelets")
LIPIDS = ("cholesterol", "hdl", "ldl", "triglycerides")


@dataclass(frozen=True)
class Drug:
    key: str
    code: str
    name: str
    ingredient: str
    sig: str
    treats: tuple[str, ...] = ()  # chronic condition keys this drug is prescribed for
    effects: tuple[tuple[str, float], ...] = ()  # latent physiology it shifts while active


DRUGS: dict[str, Drug] = {
    d.key: d
    for d in [
        # chronic
        Drug("lisinopril10", "RxNorm/314076", "lisinopril 10 MG Oral Tablet", "lisinopril",
              "10 mg by mouth once daily", ("hypertension",), (("sbp", -9.0), ("potassium", 0.2))),
        Drug("lisinopril20", "RxNorm/314077", "lisinopril 20 MG Oral Tablet", "lisinopril",
              "20 mg by mouth once daily", ("hypertension",), (("sbp", -13.0), ("potassium", 0.3))),
        Drug("losartan50", "RxNorm/979492", "losartan potassium 50 MG Oral Tablet", "losartan",
              "50 mg by mouth once daily", ("hypertension",), (("sbp", -11.0), ("potassium", 0.2))),
        Drug("amlodipine5", "RxNorm/197361", "amlodipine 5 MG Oral Tablet", "amlodipine",
              "5 mg by mouth once daily", ("hypertension",), (("sbp", -9.0),)),
        Drug("amlodipine10", "RxNorm/308135", "amlodipine 10 MG Oral Tablet", "amlodipine",
              "10 mg by mouth once daily", ("hypertension",), (("sbp", -13.0),)),
        Drug("hctz25", "RxNorm/310798", "hydrochlorothiazide 25 MG Oral Tablet", "hydrochlorothiazide",
              "25 mg by mouth once daily in the morning", ("hypertension",), (("sbp", -9.0), ("sodium", -3.0))),
        Drug("metformin500", "RxNorm/861007", "metformin hydrochloride 500 MG Oral Tablet", "metformin",
              "500 mg by mouth twice daily with meals", ("t2dm",), (("a1c", -0.8),)),
        Drug("metformin1000", "RxNorm/861004", "metformin hydrochloride 1000 MG Oral Tablet", "metformin",
              "1000 mg by mouth twice daily with meals", ("t2dm",), (("a1c", -1.2),)),
        Drug("glipizide5", "RxNorm/310488", "glipizide 5 MG Oral Tablet", "glipizide",
              "5 mg by mouth once daily before breakfast", ("t2dm",), (("a1c", -0.9),)),
        Drug("empagliflozin10", "RxNorm/1545658", "empagliflozin 10 MG Oral Tablet", "empagliflozin",
              "10 mg by mouth once daily", ("t2dm",), (("a1c", -0.6), ("uacr", -0.3))),
        Drug("glargine", "RxNorm/261551", "insulin glargine 100 UNT/ML Injectable Solution", "insulin glargine",
              "inject 14 units subcutaneously at bedtime", ("t2dm",), (("a1c", -1.6),)),
        Drug("atorvastatin20", "RxNorm/617312", "atorvastatin 20 MG Oral Tablet", "atorvastatin",
              "20 mg by mouth once daily at bedtime", ("hyperlipidemia",), (("ldl", -0.43),)),
        Drug("atorvastatin40", "RxNorm/617311", "atorvastatin 40 MG Oral Tablet", "atorvastatin",
              "40 mg by mouth once daily at bedtime", ("hyperlipidemia",), (("ldl", -0.50),)),
        Drug("levothyroxine50", "RxNorm/966221", "levothyroxine sodium 0.05 MG Oral Tablet", "levothyroxine",
              "50 mcg by mouth once daily before breakfast", ("hypothyroidism",), (("tsh", -0.55),)),
        Drug("levothyroxine75", "RxNorm/966222", "levothyroxine sodium 0.075 MG Oral Tablet", "levothyroxine",
              "75 mcg by mouth once daily before breakfast", ("hypothyroidism",), (("tsh", -0.78),)),
        Drug("albuterol", "RxNorm/745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "albuterol",
              "2 puffs inhaled every 4-6 hours as needed for wheezing", ("copd",)),
        Drug("tiotropium", "RxNorm/485032", "tiotropium 0.018 MG Inhalation Powder", "tiotropium",
              "inhale contents of 1 capsule once daily", ("copd",), (("spo2", 1.0),)),
        Drug("furosemide40", "RxNorm/313988", "furosemide 40 MG Oral Tablet", "furosemide",
              "40 mg by mouth once daily", ("heart_failure",), (("weight", -1.5), ("potassium", -0.3))),
        Drug("metoprolol", "RxNorm/866436", "24 HR metoprolol succinate 50 MG Extended Release Oral Tablet",
              "metoprolol succinate", "50 mg by mouth once daily", ("heart_failure", "atrial_fibrillation"),
              (("hr", -14.0), ("sbp", -4.0))),
        Drug("apixaban", "RxNorm/1364445", "apixaban 5 MG Oral Tablet", "apixaban", "5 mg by mouth twice daily",
              ("atrial_fibrillation",)),
        Drug("sertraline50", "RxNorm/312940", "sertraline 50 MG Oral Tablet", "sertraline",
              "50 mg by mouth once daily", ("depression",)),
        Drug("omeprazole20", "RxNorm/198053", "omeprazole 20 MG Delayed Release Oral Capsule", "omeprazole",
              "20 mg by mouth once daily before breakfast", ("gerd",)),
        Drug("acetaminophen500", "RxNorm/198440", "acetaminophen 500 MG Oral Tablet", "acetaminophen",
              "1000 mg by mouth every 8 hours as needed for knee pain", ("osteoarthritis",)),
        # acute and inpatient
        Drug("ceftriaxone", "RxNorm/1665021", "ceftriaxone 1000 MG Injection", "ceftriaxone",
              "1 g IV every 24 hours"),
        Drug("azithromycin", "RxNorm/308460", "azithromycin 250 MG Oral Tablet", "azithromycin",
              "500 mg by mouth on day 1, then 250 mg daily for 4 days"),
        Drug("amox_clav", "RxNorm/617296", "amoxicillin 875 MG / clavulanate 125 MG Oral Tablet",
              "amoxicillin-clavulanate", "1 tablet by mouth twice daily for 5 days"),
        Drug("albuterol_neb", "RxNorm/245314", "albuterol 0.83 MG/ML Inhalation Solution", "albuterol",
              "2.5 mg nebulized every 4 hours"),
        Drug("prednisone", "RxNorm/312615", "predniSONE 20 MG Oral Tablet", "prednisone",
              "40 mg by mouth once daily for 5 days"),
        Drug("furosemide_iv", "RxNorm/1719286", "furosemide 10 MG/ML Injectable Solution", "furosemide",
              "40 mg IV twice daily"),
        Drug("saline", "RxNorm/313002", "sodium chloride 9 MG/ML Injectable Solution", "sodium chloride 0.9%",
              "1 L IV bolus, then 100 mL/h"),
        Drug("cefazolin", "RxNorm/1665060", "cefazolin 2000 MG Injection", "cefazolin", "2 g IV every 8 hours"),
        Drug("cephalexin", "RxNorm/309114", "cephalexin 500 MG Oral Capsule", "cephalexin",
              "500 mg by mouth four times daily for 7 days"),
        Drug("ciprofloxacin", "RxNorm/309309", "ciprofloxacin 500 MG Oral Tablet", "ciprofloxacin",
              "500 mg by mouth twice daily for 7 days"),
        Drug("aspirin_load", "RxNorm/243670", "aspirin 81 MG Chewable Tablet", "aspirin", "324 mg chewed once"),
        Drug("dextrose", "RxNorm/1795477", "glucose 500 MG/ML Injectable Solution", "dextrose 50%", "25 g IV once"),
        Drug("pantoprazole_iv", "RxNorm/1094107", "pantoprazole 40 MG Injection", "pantoprazole",
              "40 mg IV twice daily"),
        Drug("pantoprazole", "RxNorm/314200", "pantoprazole 40 MG Delayed Release Oral Tablet", "pantoprazole",
              "40 mg by mouth twice daily for 8 weeks"),
        Drug("ibuprofen", "RxNorm/197806", "ibuprofen 600 MG Oral Tablet", "ibuprofen",
              "600 mg by mouth every 6 hours as needed for pain"),
        Drug("metoprolol_iv", "RxNorm/866508", "metoprolol tartrate 1 MG/ML Injectable Solution",
              "metoprolol tartrate", "5 mg IV once"),
        Drug("enoxaparin", "RxNorm/854235", "enoxaparin sodium 40 MG/0.4ML Prefilled Syringe", "enoxaparin",
              "40 mg subcutaneously once daily"),
        Drug("oxycodone_apap", "RxNorm/1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG Oral Tablet",
              "oxycodone-acetaminophen", "1 tablet by mouth every 6 hours as needed for severe pain"),
        Drug("heparin", "RxNorm/1361615", "heparin sodium, porcine 5000 UNT/ML Injectable Solution", "heparin",
              "5000 units subcutaneously every 8 hours"),
        Drug("ondansetron", "RxNorm/312086", "ondansetron 4 MG Disintegrating Oral Tablet", "ondansetron",
              "4 mg by mouth every 8 hours as needed for nausea"),
    ]
}
DRUG_BY_CODE: dict[str, Drug] = {}
for _drug in DRUGS.values():
    # Several keys may share a code (acute and chronic use of one product); the chronic one names the indication.
    if _drug.code not in DRUG_BY_CODE or _drug.treats:
        DRUG_BY_CODE[_drug.code] = _drug


@dataclass(frozen=True)
class Rung:
    """A step of a treatment ladder: start `product`, or raise to it from the lower dose `replaces`."""

    product: str
    replaces: str | None = None
    alternatives: tuple[str, ...] = ()  # ingredients that, when taken, make starting `product` unnecessary


# The first rung that applies is the next step when a condition stays above goal. A product is only started when
# neither it nor an alternative is taken and it was not stopped for a reason.
TREATMENT_LADDERS: dict[str, tuple[Rung, ...]] = {
    "hypertension": (
        Rung("lisinopril10", alternatives=("losartan",)),
        Rung("losartan50", alternatives=("lisinopril",)),
        Rung("lisinopril20", replaces="lisinopril10"),
        Rung("amlodipine5"),
        Rung("amlodipine10", replaces="amlodipine5"),
        Rung("hctz25"),
    ),
    "t2dm": (
        Rung("metformin500"),
        Rung("metformin1000", replaces="metformin500"),
        Rung("glipizide5"),
        Rung("empagliflozin10"),
        Rung("glargine"),
    ),
}
# Conditions followed by one lab and treated with one dose step: the lab, the value above which the low dose is
# stepped up, the low and high products, and the days since the last treatment change before it is.
ONE_STEP_TITRATION = {
    "hyperlipidemia": ("ldl", 100.0, "atorvastatin20", "atorvastatin40", 180),
    "hypothyroidism": ("tsh", 4.5, "levothyroxine50", "levothyroxine75", 60),
}


@dataclass(frozen=True)
class Condition:
    key: str
    code: str
    name: str
    label: str  # in "When was <label> first diagnosed?"
    family: str  # code prefix shared by every code that means this condition
    med_label: str  # in "prescribed for <med_label>"
    weight: float  # how often it is drawn for a patient
    first_line: tuple[str, ...]  # drugs started at diagnosis
    established: tuple[str, ...]  # drugs a patient already has when the record opens with the condition


CONDITIONS: dict[str, Condition] = {
    c.key: c
    for c in [
        Condition("hypertension", "ICD10CM/I10", "Essential (primary) hypertension", "hypertension", "ICD10CM/I10",
                   "hypertension", 0.9, ("lisinopril10",), ("lisinopril10", "amlodipine5")),
        Condition("t2dm", "ICD10CM/E11.9", "Type 2 diabetes mellitus without complications", "type 2 diabetes",
                   "ICD10CM/E11", "diabetes", 0.65, ("metformin500",), ("metformin1000",)),
        Condition("hyperlipidemia", "ICD10CM/E78.5", "Hyperlipidemia, unspecified", "hyperlipidemia",
                   "ICD10CM/E78", "high cholesterol", 0.6, ("atorvastatin20",), ("atorvastatin20",)),
        Condition("ckd", "ICD10CM/N18.31", "Chronic kidney disease, stage 3a", "chronic kidney disease",
                   "ICD10CM/N18", "chronic kidney disease", 0.3, (), ()),
        Condition("hypothyroidism", "ICD10CM/E03.9", "Hypothyroidism, unspecified", "hypothyroidism",
                   "ICD10CM/E03", "hypothyroidism", 0.3, ("levothyroxine50",), ("levothyroxine75",)),
        Condition("copd", "ICD10CM/J44.9", "Chronic obstructive pulmonary disease, unspecified", "COPD",
                   "ICD10CM/J44", "COPD", 0.22, ("albuterol",), ("albuterol", "tiotropium")),
        Condition("heart_failure", "ICD10CM/I50.22", "Chronic systolic (congestive) heart failure",
                   "heart failure", "ICD10CM/I50", "heart failure", 0.15, ("furosemide40", "metoprolol"),
                   ("furosemide40", "metoprolol")),
        Condition("atrial_fibrillation", "ICD10CM/I48.91", "Unspecified atrial fibrillation", "atrial fibrillation",
                   "ICD10CM/I48", "atrial fibrillation", 0.15, ("apixaban", "metoprolol"), ("apixaban", "metoprolol")),
        Condition("depression", "ICD10CM/F32.9", "Major depressive disorder, single episode, unspecified",
                   "depression", "ICD10CM/F32", "depression", 0.25, ("sertraline50",), ("sertraline50",)),
        Condition("gerd", "ICD10CM/K21.9", "Gastro-esophageal reflux disease without esophagitis", "GERD",
                   "ICD10CM/K21", "acid reflux", 0.25, ("omeprazole20",), ("omeprazole20",)),
        Condition("osteoarthritis", "ICD10CM/M17.11", "Unilateral primary osteoarthritis, right knee",
                   "osteoarthritis of the right knee", "ICD10CM/M17", "knee osteoarthritis", 0.2,
                   ("acetaminophen500",), ("acetaminophen500",)),
        Condition("obesity", "ICD10CM/E66.9", "Obesity, unspecified", "obesity", "ICD10CM/E66", "obesity", 0.3,
                   (), ()),
    ]
}
# Conditions a patient's record is built around: each has a drug, so every patient has a medication history.
ANCHOR_CONDITIONS = ("hypertension", "t2dm", "hyperlipidemia", "hypothyroidism")
# Diagnosed from a lab value, which is therefore drawn at the visit that makes the diagnosis.
LAB_DIAGNOSED = {"t2dm": ("a1c",), "ckd": BMP, "hyperlipidemia": LIPIDS, "hypothyroidism": ("tsh",)}


@dataclass(frozen=True)
class Imaging:
    code: str
    name: str
    title: str
    technique: str
    normal: str


IMAGING: dict[str, Imaging] = {
    "cxr": Imaging("CPT4/71046", "Radiologic examination, chest; 2 views", "CHEST X-RAY, 2 VIEWS",
                    "PA and lateral views of the chest.",
                    "The lungs are clear. No focal consolidation, pleural effusion or pneumothorax. "
                    "Normal heart size."),
    "cxr1": Imaging("CPT4/71045", "Radiologic examination, chest; single view", "CHEST X-RAY, PORTABLE",
                     "Single portable AP view of the chest.",
                     "No focal consolidation, pleural effusion or pneumothorax. "
                     "Cardiomediastinal silhouette is normal."),
    "ct_head": Imaging("CPT4/70450", "Computed tomography, head or brain; without contrast material",
                        "CT HEAD WITHOUT CONTRAST", "Axial images from skull base to vertex without contrast.",
                        "No acute intracranial hemorrhage, mass effect or territorial infarct. Ventricles normal."),
    "ankle_xr": Imaging("CPT4/73610", "Radiologic examination, ankle; complete, minimum of 3 views",
                         "RIGHT ANKLE X-RAY, 3 VIEWS", "AP, mortise and lateral views of the right ankle.",
                         "No acute fracture or dislocation. Lateral soft tissue swelling. Ankle mortise intact."),
    "renal_us": Imaging("CPT4/76770", "Ultrasound, retroperitoneal (eg, renal, aorta, nodes); complete",
                         "RENAL ULTRASOUND", "Grayscale and color Doppler images of both kidneys and the bladder.",
                         "Normal-sized kidneys without hydronephrosis, stones or masses. Bladder unremarkable."),
    "echo": Imaging("CPT4/93306", "Echocardiography, transthoracic, complete, with Doppler",
                     "TRANSTHORACIC ECHOCARDIOGRAM", "Complete 2D, M-mode, color and spectral Doppler study.",
                     "Normal left ventricular size and systolic function, LVEF 60%. No significant valve disease."),
    "knee_xr": Imaging("CPT4/73562", "Radiologic examination, knee; 3 views", "RIGHT KNEE X-RAY, 3 VIEWS",
                        "AP, lateral and sunrise views of the right knee.",
                        "Mild joint space narrowing without fracture or effusion."),
}


@dataclass(frozen=True)
class Acute:
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


ACUTE: dict[str, Acute] = {
    a.key: a
    for a in [
        Acute("pneumonia", "ICD10CM/J18.9", "Pneumonia, unspecified organism", "community-acquired pneumonia",
               "fever, productive cough and shortness of breath for three days", 1.0, 0.7, (3, 6),
               ("ceftriaxone", "azithromycin"), ("ceftriaxone", "azithromycin"), ("amox_clav",), "cxr",
               "Patchy consolidation in the right lower lobe consistent with pneumonia. No pleural effusion.",
               "treated with IV ceftriaxone and azithromycin with defervescence and improving oxygenation",
               (("wbc", 8.0), ("temp", 1.8), ("hr", 22.0), ("rr", 7.0), ("spo2", -6.0))),
        Acute("copd_exacerbation", "ICD10CM/J44.1",
               "Chronic obstructive pulmonary disease with (acute) exacerbation", "COPD exacerbation",
               "worsening shortness of breath and wheezing for four days", 0.0, 0.6, (2, 5),
               ("albuterol_neb", "prednisone"), ("albuterol_neb", "prednisone", "azithromycin"), ("prednisone",),
               "cxr", "Hyperinflated lungs without focal consolidation.",
               "treated with scheduled nebulized albuterol, prednisone and azithromycin, weaned to room air",
               (("spo2", -7.0), ("rr", 8.0), ("hr", 15.0), ("wbc", 2.0))),
        Acute("chf_exacerbation", "ICD10CM/I50.23", "Acute on chronic systolic (congestive) heart failure",
               "acute on chronic systolic heart failure", "progressive leg swelling, orthopnea and weight gain",
               0.0, 0.9, (3, 7), ("furosemide_iv",), ("furosemide_iv",), (), "cxr",
               "Cardiomegaly with interstitial edema and small bilateral pleural effusions.",
               "diuresed with IV furosemide with net negative fluid balance and resolution of orthopnea",
               (("bnp", 1.0), ("weight", 3.5), ("spo2", -5.0), ("rr", 6.0), ("creatinine", 0.25))),
        Acute("aki", "ICD10CM/N17.9", "Acute kidney failure, unspecified", "acute kidney injury",
               "poor oral intake, vomiting and lightheadedness for three days", 0.0, 0.8, (2, 5), ("saline",),
               ("saline", "ondansetron"), (), "renal_us", "",
               "treated with IV fluids while nephrotoxic and antihypertensive medications were held; creatinine "
               "improved toward baseline",
               (("creatinine", 1.0), ("bun", 25.0), ("potassium", 0.7), ("co2", -4.0), ("sbp", -15.0))),
        Acute("uti", "ICD10CM/N39.0", "Urinary tract infection, site not specified", "urinary tract infection",
               "dysuria, urinary frequency and low-grade fever", 0.7, 0.25, (2, 4), ("ceftriaxone",),
               ("ceftriaxone",), ("ciprofloxacin",), None, "",
               "treated with IV ceftriaxone, transitioned to oral ciprofloxacin once afebrile",
               (("wbc", 5.0), ("temp", 1.2), ("hr", 12.0))),
        Acute("cellulitis", "ICD10CM/L03.115", "Cellulitis of right lower limb", "cellulitis of the right leg",
               "redness, warmth and swelling of the right lower leg", 0.6, 0.4, (2, 4), ("cefazolin",),
               ("cefazolin",), ("cephalexin",), None, "",
               "treated with IV cefazolin with receding erythema, transitioned to oral cephalexin",
               (("wbc", 5.0), ("temp", 1.0), ("hr", 10.0))),
        Acute("chest_pain", "ICD10CM/R07.9", "Chest pain, unspecified", "chest pain",
               "substernal chest pressure at rest lasting twenty minutes", 0.9, 0.35, (1, 2), ("aspirin_load",),
               (), (), "cxr1", "",
               "ruled out for acute coronary syndrome with serial troponins and ECGs; outpatient stress test planned",
               (("hr", 10.0), ("sbp", 12.0))),
        Acute("syncope", "ICD10CM/R55", "Syncope and collapse", "syncope",
               "a brief loss of consciousness after standing up quickly", 0.5, 0.4, (1, 3), ("saline",), ("saline",),
               (), "ct_head", "", "monitored on telemetry without arrhythmia; orthostatic hypotension on testing",
               (("sbp", -12.0),)),
        Acute("hypoglycemia", "ICD10CM/E11.649", "Type 2 diabetes mellitus with hypoglycemia without coma",
               "hypoglycemia", "confusion and sweating with a fingerstick glucose of 41 mg/dL", 0.0, 0.2, (1, 2),
               ("dextrose",), (), (), None, "", "observed with hourly glucose checks; glipizide was stopped",
               (("glucose", 1.0), ("hr", 15.0))),
        Acute("gi_bleed", "ICD10CM/K92.2", "Gastrointestinal hemorrhage, unspecified",
               "upper gastrointestinal bleeding", "black tarry stools and dizziness for two days", 0.25, 1.0, (3, 5),
               ("pantoprazole_iv",), ("pantoprazole_iv",), ("pantoprazole",), None, "",
               "transfused two units of packed red cells; upper endoscopy showed a duodenal ulcer without active "
               "bleeding, treated with IV pantoprazole",
               (("hemoglobin", -5.5), ("hr", 20.0), ("sbp", -18.0), ("bun", 20.0))),
        Acute("ankle_sprain", "ICD10CM/S93.401A",
               "Sprain of unspecified ligament of right ankle, initial encounter", "right ankle sprain",
               "right ankle pain and swelling after a fall on the stairs", 0.5, 0.0, (1, 1), ("ibuprofen",), (),
               ("ibuprofen",), "ankle_xr", "", "", (("hr", 8.0),)),
        Acute("new_afib", "ICD10CM/I48.91", "Unspecified atrial fibrillation",
               "atrial fibrillation with rapid ventricular response", "palpitations and shortness of breath since "
               "this morning", 0.3, 0.6, (1, 3), ("metoprolol_iv",), ("metoprolol_iv",), (), "cxr1", "",
               "rate controlled with IV then oral metoprolol; anticoagulation started with apixaban",
               (("hr", 45.0),)),
        Acute("knee_replacement", "ICD10CM/M17.11", "Unilateral primary osteoarthritis, right knee",
               "elective right total knee arthroplasty for osteoarthritis", "elective right total knee arthroplasty",
               0.0, 1.0, (2, 3), (), ("cefazolin", "enoxaparin", "oxycodone_apap"), ("oxycodone_apap", "enoxaparin"),
               "knee_xr", "Postoperative right total knee arthroplasty in expected position without complication.",
               "underwent an uncomplicated right total knee arthroplasty and worked with physical therapy",
               (("hemoglobin", -1.8),)),
    ]
}
ACUTE_PROCEDURES: dict[str, tuple[tuple[str, str], ...]] = {
    "chest_pain": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "syncope": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "new_afib": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "chf_exacerbation": (("CPT4/93000", "Electrocardiogram, routine ECG with at least 12 leads; with interpretation"),),
    "gi_bleed": (("CPT4/36430", "Transfusion, blood or blood components"),
                 ("CPT4/43239", "Esophagogastroduodenoscopy, flexible, transoral; with biopsy, single or multiple")),
    "knee_replacement": (("CPT4/27447", "Arthroplasty, knee, condyle and plateau; medial AND lateral compartments "
                                        "with or without patella resurfacing (total knee arthroplasty)"),),
}
ACUTE_LABS: dict[str, tuple[str, ...]] = {
    "chest_pain": ("troponin",),
    "syncope": ("troponin",),
    "new_afib": ("troponin", "tsh"),
    "chf_exacerbation": ("bnp", "troponin"),
    "gi_bleed": ("inr",),
}

CLINICIANS = (
    "Maria Alvarez, MD", "James Chen, MD", "Priya Raman, MD", "Samuel Okafor, MD", "Laura Becker, MD",
    "Daniel Kim, MD", "Hannah Weiss, MD", "Omar Haddad, MD", "Grace Liu, MD", "Peter Novak, MD",
)
HOSPITALISTS = ("Elena Petrova, MD", "Michael Brown, MD", "Aisha Rahman, MD", "David Cohen, MD", "Nora Lindqvist, MD")
EMERGENCY_DOCTORS = ("Jessica Jones, MD", "Carlos Mendes, MD", "Kevin O'Brien, MD", "Yuki Tanaka, MD")
RADIOLOGISTS = ("Robert Hale, MD", "Sofia Marino, MD", "Ian Fraser, MD")
CLINICS = ("Internal Medicine Clinic", "Family Medicine Clinic", "Primary Care Clinic - Hoover Pavilion")
RACES = ("White", "Asian", "Black or African American", "Other Race", "Native Hawaiian or Other Pacific Islander")
ETHNICITIES = ("Not Hispanic or Latino", "Hispanic or Latino")
E_AND_M = {
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
    "retina": ("CPT4/92250", "Fundus photography with interpretation and report"),
    "spirometry": ("CPT4/94010", "Spirometry, including graphic record, total and timed vital capacity"),
}
NOTE_CODES = {
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
class Tier:
    tokens: tuple[int, int]  # target record length, estimated tokens
    years: tuple[float, float]  # planned span of the record
    n_conditions: tuple[int, int]
    emergency_rate: float  # share of encounters that are emergency visits
    lab_rate: float  # share that are lab-only visits


LENGTH_TIERS: dict[str, Tier] = {
    "short": Tier((1500, 3600), (0.8, 2.5), (1, 2), 0.10, 0.15),
    "medium": Tier((9000, 30000), (3.0, 7.0), (2, 4), 0.10, 0.20),
    "long": Tier((47000, 70000), (7.0, 11.0), (3, 5), 0.12, 0.20),
    "very_long": Tier((88000, 112000), (10.0, 15.0), (4, 6), 0.12, 0.20),
}
# Share of a cohort per tier (the release: most records beyond 32k tokens, some beyond 100k; a few short ones).
TIER_SHARES = (("short", 0.25), ("medium", 0.45), ("long", 0.15), ("very_long", 0.15))


def titrated_glargine(units: int) -> Drug:
    """Insulin glargine at a higher nightly dose: same product, new sig, more effect."""
    base = DRUGS["glargine"]
    return Drug(base.key, base.code, base.name, base.ingredient,
                f"inject {units} units subcutaneously at bedtime", base.treats,
                (("a1c", -1.6 - 0.3 * (units - 14) / 4),))
