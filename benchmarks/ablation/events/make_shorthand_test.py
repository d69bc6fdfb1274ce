"""Write `shorthand_test.csv`: the TEST part of FHIR-AgentBench dev rewritten by a second, independent hand.

`make_shorthand.py` rewrites the tune part, and the `events` strategy was tuned on those rewrites. This script is
the held-out check: a differently written phrase table (other abbreviation choices - "hb" not "Hgb", "press" not
"BP", "ordered"/"given" not "rx'd", "hosp" not "adm", "visit #1" ordinals, month names instead of numeric months,
lower-case typing, dropped words), applied to the *test* part only. It was written before any result on these
rewrites was looked at, and nothing in the strategy is tuned on them. The meaning of each question is unchanged.

    python benchmarks/ablation/events/make_shorthand_test.py data/mimic_fhir   # the converted data folder
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_shorthand import write_rewrites  # noqa: E402

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]

# (pattern, replacement), applied in order, case-insensitively; longer phrases first. Deliberately not the tune
# table's choices: a second clinician's habits.
PHRASES: list[tuple[str, str]] = [
    # visits and places
    (r"\bhospital (?:visit|encounter|stay|admission)s?\b", "hosp"),
    (r"\bicu (?:visit|stay|encounter)s?\b", "icu admission"),
    (r"\bintensive care unit\b", "icu"),
    (r"\bemergency (?:room|department)\b", "ER"),
    (r"\bdischarged?\b", "dc"),
    (r"\badmitted\b", "admit"),
    # vitals
    (r"\bsystolic blood pressure\b", "systolic press"),
    (r"\bdiastolic blood pressure\b", "diastolic press"),
    (r"\b(?:mean|arterial) blood pressure(?: mean)?\b", "mean art press"),
    (r"\bblood pressure\b", "press"),
    (r"\bheart rate\b", "pulse"),
    (r"\brespiratory rate\b", "resp rate"),
    (r"\bbody temperature\b|\btemperature\b", "T"),
    (r"\bo2 saturation pulseoxymetry\b|\bo2 saturation\b|\boxygen saturation\b", "SpO2"),
    (r"\bweight\b", "wgt"),
    (r"\bheight\b", "hgt"),
    # labs
    (r"\bhemoglobin\b", "hb"),
    (r"\bhematocrit\b", "hct"),
    (r"\bpotassium\b", "K+"),
    (r"\bsodium\b", "Na+"),
    (r"\bglucose\b", "BG"),
    (r"\bcreatinine\b", "creat"),
    (r"\bplatelet count\b|\bplatelets\b", "plts"),
    (r"\bwhite blood cells\b", "wbc count"),
    (r"\bcalcium\b", "Ca"),
    (r"\blactate\b", "lac"),
    (r"\blab(?:oratory)? tests?\b|\blab(?:oratory)? results?\b", "labwork"),
    (r"\bmicrobiology (?:tests?|cultures?|examinations?)\b", "cultures"),
    (r"\bmicrobiolog(?:y|ical)\b", "micro"),
    # diagnoses, procedures, drugs
    (r"\bdiagnos(?:is|es)\b", "dxs"),
    (r"\bdiagnosed\b", "dx'd"),
    (r"\bhypertension\b", "high BP"),
    (r"\bhyperlipidemia\b", "HLD"),
    (r"\bdiabetes(?: mellitus)?\b", "DM2"),
    (r"\bheart failure\b", "HF"),
    (r"\bkidney\b", "renal"),
    (r"\bprocedures?\b", "px"),
    (r"\bmedications?\b|\bdrugs?\b", "meds"),
    (r"\bprescriptions?\b", "scripts"),
    (r"\bprescribed\b", "ordered"),
    (r"\bintravenous\b", "iv"),
    (r"\boutputs?\b", "output"),
    (r"\binputs?\b|\bintakes?\b", "ins"),
    # people and question words
    (r"\bpatient\b", "pt."),
    (r"\bwhat (?:was|is) the\b", "what"),
    (r"\bcan you (?:tell me|list|show me)\b", "list"),
    (r"\bmost recent(?:ly)?\b", "last"),
    (r"\bthe first time\b", "first"),
    (r"\bfirst\b", "#1"),
    (r"\bsecond\b", "#2"),
    (r"\bmeasured\b", "recorded"),
    (r"\bnumber of\b", "no. of"),
    (r"\bminimum\b", "min"),
    (r"\bmaximum\b", "max"),
    (r"\baverage\b", "avg"),
    (r"\bsince\b", "after"),
]
_SLASH_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4})\b")
_SLASH_MONTH = re.compile(r"\b(\d{2})/(\d{4})\b")
_DROPPED = re.compile(r"\b(?:the|a|an|of|their|did|does|has|have|been|was|were)\s+(?=\w)", re.IGNORECASE)


def rewrite(question: str) -> str:
    text = question
    text = _SLASH_DATE.sub(lambda m: f"{_MONTHS[int(m[1]) - 1]} {int(m[2])} {m[3]}"
                           if 1 <= int(m[1]) <= 12 else m[0], text)  # 08/11/2146 -> aug 11 2146
    text = _SLASH_MONTH.sub(lambda m: f"{_MONTHS[int(m[1]) - 1]} {m[2]}"
                            if 1 <= int(m[1]) <= 12 else m[0], text)  # 05/2137 -> may 2137
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
    text = _DROPPED.sub("", text)  # typed in a hurry: articles and auxiliaries go
    text = text.replace("?", "").replace("'s ", " ")
    return re.sub(r"\s+", " ", text).strip().lower()


def main(data_folder: str, out: str | None = None) -> None:
    target = Path(out) if out else HERE / "shorthand_test.csv"
    count = write_rewrites(data_folder, target, test_part=True, rewrite_question=rewrite)
    print(f"{count} test questions -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
