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

Modules, by responsibility: `vocabulary` (codes, drugs, conditions, acute problems, length tiers), `state` (the
patient's clinical state and event drafts), `physiology` (latent values and measurements), `notes` (note prose,
clinicians' summaries, copied-forward notes), `simulator` (scheduling and care decisions that write the record),
`instructions` (questions, gold answers and evidence), `cohort` (`generate_cohort`, `generate_patient`).
"""

from medalign_rag.datasets.synthetic.cohort import (
    INSTRUCTIONS_FILENAME,
    MODEL_RESPONSES_FILENAME,
    RELEASE_EHRS_DIRNAME,
    SYNTHETIC_ID_BASE,
    CohortSummary,
    PatientSummary,
    SyntheticPatient,
    generate_cohort,
    generate_patient,
    synthetic_patient_id,
)
from medalign_rag.datasets.synthetic.instructions import evidence_depths
from medalign_rag.datasets.synthetic.vocabulary import LENGTH_TIERS

__all__ = [
    "INSTRUCTIONS_FILENAME",
    "LENGTH_TIERS",
    "MODEL_RESPONSES_FILENAME",
    "RELEASE_EHRS_DIRNAME",
    "SYNTHETIC_ID_BASE",
    "CohortSummary",
    "PatientSummary",
    "SyntheticPatient",
    "evidence_depths",
    "generate_cohort",
    "generate_patient",
    "synthetic_patient_id",
]
