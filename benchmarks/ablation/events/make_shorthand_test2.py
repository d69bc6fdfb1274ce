"""Write `shorthand_test2.csv`: the TEST part of FHIR-AgentBench dev rewritten by a third, independent hand.

`make_shorthand.py` (tune part, what `events` was tuned on) and `make_shorthand_test.py` (test part, a second
rewriter) already exist. This is a third held-out set for the test part, written by someone who has not read the
`events` strategy, its vocabulary or its results, and it was never run through the strategy by its writer.

The habits of this third clinician, fixed before any rewrite was looked at (the first table also had the lines
marked "(table)", which this list had left out; "(after reading)" marks the four fixes made after reading 40 random
(question, rewrite) pairs):

- framing: terse search-box typing. "pt" for patient (no period), the patient id kept as is; "What was/is the",
  "Can you tell me", "Tell me", "Please" and articles dropped; "their"/"his or her" dropped; a leading
  "Has/Did/Was/Is patient N" becomes "pt N" (table); every rewrite ends in "?"; case is not fixed up after a
  dropped leading word. The lab "pt" (prothrombin time) is spelled out, as "pt" now means the patient (after
  reading).
- counts, comparisons, order: "how many times" -> "# times", "number of" -> "#", "maximum/minimum/average" ->
  "max/min/avg", "first/second" -> "1st/2nd", "most recent" -> "latest", "greater/less than" -> ">"/"<" (table).
- encounters: "hospital visit/encounter/stay/admission" -> "adm" (plural: "hospitalizations"), "emergency
  department/room" and "er" (after reading) -> "ED", "intensive care unit" -> "ICU", "ICU visit" -> "ICU stay",
  "admitted to the hospital" -> "admitted", "discharge(d)" -> "d/c('d)". "stay" alone is never introduced (it would
  blur hospital vs ICU).
- dates: MM/DD/YYYY -> M/D/YYYY and MM/YYYY -> M/YYYY (leading zeros dropped, four-digit year kept: a two-digit
  year is ambiguous in the shifted 21xx calendar), also before "/this year"; "YYYY-MM-DD hh:mm:00" -> "M/D/YYYY
  hh:mm"; "N days/months/years ago" -> "N d/mo/yr ago", "this/last year|month" -> "this/last yr|mo" (table);
  "before" -> "prior to"; "since" kept.
- vitals: HR, RR, SBP, DBP, MAP (mean blood pressure), BP, temp, O2 sat (also for "spo2"), wt, ht; "urine output"
  -> "UOP", MIMIC's "or urine output" (operating-room urine) -> "OR UOP".
- labs: single-analyte abbreviations only (Na, K, Cl, Ca, Mg, phos, HCO3, gluc, BUN, Cr, Hgb, Hct, plt count, WBC,
  RBC, ALT, AST, alk phos, bili, AG, trop T, CK, CK-MB, lymphs; monos and eos after reading); never a panel name
  ("CBC", "BMP", "LFTs"), since a panel is not the one analyte asked about. "lab(oratory) test" -> "lab", plural
  "labs"; "microbiology (test)" -> "micro".
- meds: exact synonyms only: "0.9% sodium chloride"/"sodium chloride 0.9%" -> "NS", "potassium chloride" -> "KCl",
  "magnesium sulfate" -> "MgSO4", "sodium bicarbonate" -> "NaHCO3", "acetaminophen" -> "APAP", "milk of
  magnesia" -> "MOM", "5% dextrose" -> "D5W", "lactated ringers" -> "LR"; brand for generic only where the brand
  is that one drug (ondansetron -> Zofran, furosemide -> Lasix, docusate sodium -> Colace, pantoprazole ->
  Protonix); "antibiotic(s)" -> "abx", "administered" -> "given", "received/receive" -> "got/get" ("was received"
  -> "was given", "has received" -> "has gotten": after reading), "prescribed" -> "rx'd", "prescription(s)" ->
  "rx", "medication(s)"/"drug(s)" -> "med(s)", "intravenous" -> "IV". Prescribing is never turned into "given".
  Salt words in drug names ("enoxaparin sodium", "calcium carbonate", "potassium chl 20 meq", "glucose gel") are
  never turned into lab symbols: an analyte symbol is used only after a word that cannot end a drug name.
- diagnoses/procedures: "diagnosis/diagnoses" -> "dx", "diagnosed with" -> "dx'd w/", "procedure(s)" ->
  "proc(s)"; disease and procedure names are kept (an abbreviation can merge neighbouring codes).

Every rule is a general phrase replacement applied to every question (no per-question edits). The meaning of each
question (patient id, concept, period, aggregate) is unchanged.

    python benchmarks/ablation/events/make_shorthand_test2.py data/mimic_fhir   # the converted data folder
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_shorthand import write_rewrites  # noqa: E402

# (pattern, replacement), applied in order, case-insensitively; drug names before the lab symbols they contain.
PHRASES: list[tuple[str, str]] = [
    # the lab "PT" is spelled out: "pt" means the patient in this shorthand
    (r"(?<!\()\bpt\b(?!\))", "prothrombin time"),
    # drugs (before the analytes, so a salt in a drug name stays a drug)
    (r"\b0\.9% sodium chloride\b|\bsodium chloride 0\.9%", "NS"),
    (r"\bpotassium chloride\b", "KCl"),
    (r"\bmagnesium sulfate\b", "MgSO4"),
    (r"\bsodium bicarbonate\b", "NaHCO3"),
    (r"\bacetaminophen\b", "APAP"),
    (r"\bmilk of magnesia\b", "MOM"),
    (r"\b5% dextrose\b", "D5W"),
    (r"\blactated ringers\b", "LR"),
    (r"\bondansetron\b", "Zofran"),
    (r"\bfurosemide\b", "Lasix"),
    (r"\bdocusate sodium\b", "Colace"),
    (r"\bpantoprazole\b", "Protonix"),
    (r"\bantibiotics?\b", "abx"),
    (r"\bintravenous\b", "IV"),
    # encounters
    (r"\bhospital (?:visit|encounter|stay|admission)s\b", "hospitalizations"),
    (r"\bhospital (?:visit|encounter|stay|admission)\b", "adm"),
    (r"\bintensive care unit\b", "ICU"),
    (r"\bicu (?:visit|stay)(s?)\b", r"ICU stay\1"),
    (r"\bicu\b", "ICU"),
    (r"\bemergency (?:room|department)\b|\ber\b", "ED"),
    (r"\badmitted (?:to|into) the hospital\b", "admitted"),
    (r"\bdischarged\b", "d/c'd"),
    (r"\bdischarge\b", "d/c"),
    # vitals
    (r"\bsystolic blood pressures?\b", "SBP"),
    (r"\bdiastolic blood pressures?\b", "DBP"),
    (r"\barterial blood pressure mean\b|\bmean (?:arterial )?blood pressure\b", "MAP"),
    (r"\bblood pressure\b", "BP"),
    (r"\bheart rate\b", "HR"),
    (r"\brespiratory rate\b", "RR"),
    (r"\b(?:body )?temperature\b", "temp"),
    (r"\bo2 saturation pulseoxymetry\b|\bspo2\b|\b(?:o2|oxygen) saturation\b", "O2 sat"),
    (r"\b(?:body )?weights\b", "wts"),
    (r"\b(?:body )?weight\b", "wt"),
    (r"\bheight\b", "ht"),
    (r"\bor urine output\b", "OR UOP"),  # MIMIC's "OR Urine": operating-room urine output
    (r"\burine output\b", "UOP"),
    # labs that are not a bare salt word
    (r"\bcreatine kinase \(ck\)", "CK"),
    (r"\bcreatine kinase, mb isoenzyme\b", "CK-MB"),
    (r"\bcreatine kinase\b", "CK"),
    (r"\burea nitrogen\b", "BUN"),
    (r"\bcreatinine\b", "Cr"),
    (r"\bhemoglobin\b", "Hgb"),
    (r"\bhematocrit\b", "Hct"),
    (r"\bplatelet count\b", "plt count"),
    (r"\bwhite blood cells\b", "WBC"),
    (r"\bred blood cells\b", "RBC"),
    (r"\balanine aminotransferase \(alt\)|\balanine aminotransferase\b", "ALT"),
    (r"\basparate aminotransferase \(ast\)|\baspartate aminotransferase \(ast\)|\baspartate aminotransferase\b",
     "AST"),
    (r"\balkaline phosphatase\b", "alk phos"),
    (r"\bbilirubin\b", "bili"),
    (r"\banion gap\b", "AG"),
    (r"\btroponin t\b", "trop T"),
    (r"\blymphocytes\b", "lymphs"),
    (r"\bmonocytes\b", "monos"),
    (r"\beosinophils\b", "eos"),
    (r"\blab(?:oratory)? tests\b", "labs"),
    (r"\blab(?:oratory)? tests?\b", "lab"),
    (r"\blaboratory\b", "lab"),
    (r"\bmicrobiolog(?:y|ical) tests?\b", "micro"),
    (r"\bmicrobiolog(?:y|ical)\b", "micro"),
    # diagnoses, procedures, orders
    (r"\bdiagnosed with\b", "dx'd w/"),
    (r"\bdiagnos(?:is|es)\b", "dx"),
    (r"\bprocedures\b", "procs"),
    (r"\bprocedure\b", "proc"),
    (r"\bmedications\b|\bdrugs\b", "meds"),
    (r"\bmedication\b|\bdrug\b", "med"),
    (r"\bprescriptions?\b", "rx"),
    (r"\bprescribed\b", "rx'd"),
    (r"\badministered\b", "given"),
    (r"\b(was|were) received\b", r"\1 given"),
    (r"\b(has|have|had) received\b", r"\1 gotten"),
    (r"\breceived\b", "got"),
    (r"\breceive\b", "get"),
    # comparisons, counts, order words
    (r"\bgreater than\b", ">"),
    (r"\bless than\b", "<"),
    (r"\bhow many times\b", "# times"),
    (r"\bnumber of\b", "#"),
    (r"\bmaximum\b", "max"),
    (r"\bminimum\b", "min"),
    (r"\baverage\b", "avg"),
    (r"\bmost recent(?:ly)?\b", "latest"),
    (r"\bfor the first time\b", "1st time"),
    (r"\bfirst\b", "1st"),
    (r"\bsecond\b", "2nd"),
    (r"\bbefore\b", "prior to"),
    (r"\b(\d+) years? ago\b", r"\1 yr ago"),
    (r"\b(\d+) months? ago\b", r"\1 mo ago"),
    (r"\b(\d+) days? ago\b", r"\1 d ago"),
    (r"\b(this|last) year\b", r"\1 yr"),
    (r"\b(this|last) month\b", r"\1 mo"),
    # question framing
    (r"^(?:hey|please|so),?\s+", ""),
    (r"^(?:can|could) you (?:please )?(?:tell me|let me know|inform me|show me|find|check)\b\s*(?:if\b)?", ""),
    (r"^(?:can|could) you (?:please )?list\b", "list"),
    (r"^(?:please )?(?:tell me|show me|let me know|inform me|do you know|i want to know|provide)\b\s*(?:if\b)?", ""),
    (r"^what(?:'s| was| is| were| are) the\b", ""),
    (r"^what(?:'s| was| is| were| are) (?=patient \d+)", ""),
    (r"^(?:has|have|did|does|was|is) (patient \d+)\b", r"\1"),
    (r"\bhis or her\b|\btheir\b", ""),
    (r"\bpatient\b", "pt"),
]

# Single-analyte lab symbols, used only where the word is the lab itself: not followed by a salt or form word
# (a drug: "calcium carbonate", "potassium chl 20 meq", "glucose gel") and preceded only by a word that cannot be
# part of a drug name ("enoxaparin sodium" keeps its "sodium").
ANALYTES: dict[str, str] = {"sodium": "Na", "potassium": "K", "chloride": "Cl", "calcium": "Ca",
                            "magnesium": "Mg", "phosphate": "phos", "bicarbonate": "HCO3", "glucose": "gluc"}
_SALT_OR_FORM = r"(?:chloride|chl|bicarbonate|carbonate|acetate|gluconate|sulfate|phosphate|citrate|oxide|" \
                r"polystyrene|gel|tab|tablet|replacement|sliding|chews?|\d)"
_ANALYTE = re.compile(r"\b(" + "|".join(ANALYTES) + r")\b(?!\s+" + _SALT_OR_FORM + r"\b)", re.IGNORECASE)
_BEFORE_ANALYTE = {"", "the", "a", "an", "of", "in", "her", "his", "their", "max", "min", "avg", "1st", "last",
                   "latest", "free", "for", "any", "total", "and", "or", "had", "have", "get", "got", "pt"}

_FULL_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4}|this year|last year|this yr|last yr)\b", re.IGNORECASE)
_MONTH_DATE = re.compile(r"(?<![/\d])(\d{2})/(\d{4}|this year|last year|this yr|last yr)\b", re.IGNORECASE)
_TIMESTAMP = re.compile(r"\b(\d{4})-(\d{2})-(\d{2}) (\d{2}:\d{2}):00\b")
_ARTICLE = re.compile(r"\b(?:the|a|an)\s+(?=[\w#<>])", re.IGNORECASE)


def _analyte(match: re.Match) -> str:
    before = match.string[:match.start()].rstrip()
    previous = re.search(r"([\w']*)$", before)[1].lower()
    if previous in _BEFORE_ANALYTE or previous.endswith("'s") or previous.isdigit():
        return ANALYTES[match[1].lower()]
    return match[0]


def rewrite(question: str) -> str:
    text = question.strip()
    text = _TIMESTAMP.sub(lambda m: f"{int(m[2])}/{int(m[3])}/{m[1]} {m[4]}", text)  # 2169-02-10 05:25:00
    text = _FULL_DATE.sub(lambda m: f"{int(m[1])}/{int(m[2])}/{m[3]}", text)  # 08/01/2146 -> 8/1/2146
    text = _MONTH_DATE.sub(lambda m: f"{int(m[1])}/{m[2]}", text)  # 03/2110 -> 3/2110
    for pattern, replacement in PHRASES:
        text = re.sub(pattern, replacement, text, flags=re.IGNORECASE)
        text = text.lstrip(" ,")
    text = _ANALYTE.sub(_analyte, text)
    text = _ARTICLE.sub("", text)  # typed terse: articles go
    text = re.sub(r"\s+([?.,])", r"\1", re.sub(r"\s+", " ", text)).strip()
    text = re.sub(r"[.\s]+$", "", text)
    if not text.endswith("?"):
        text += "?"
    return text


def main(data_folder: str, out: str | None = None) -> None:
    target = Path(out) if out else HERE / "shorthand_test2.csv"
    count = write_rewrites(data_folder, target, test_part=True, rewrite_question=rewrite)
    print(f"{count} test questions -> {target}")


if __name__ == "__main__":
    main(*sys.argv[1:])
