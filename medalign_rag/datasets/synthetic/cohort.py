"""Cohort generation: a length tier per patient, one simulation and its instructions each, and the files written."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Sequence

from pydantic import BaseModel, Field

from medalign_rag.datasets.synthetic.instructions import TAXONOMY_GROUP, InstructionWriter, evidence_depths
from medalign_rag.datasets.synthetic.notes import CopyForward
from medalign_rag.datasets.synthetic.simulator import Simulator
from medalign_rag.datasets.synthetic.vocabulary import LENGTH_TIERS, TIER_SHARES
from medalign_rag.errors import MedalignError
from medalign_rag.records.dataset import INSTRUCTIONS_FILENAME, MODEL_RESPONSES_FILENAME, RELEASE_EHRS_DIRNAME
from medalign_rag.records.model import Instruction, PatientRecord, check_patient_id
from medalign_rag.records.serialize import write_release_xml
from medalign_rag.tokenization import TokenCounter, default_counter

# Synthetic person ids are numbers, as the release's are (MedHELM's reader turns each file name into an int):
# SYNTHETIC_ID_BASE + the patient's 1-based number, so patient 1 is 9900000000001 and patient 9999 is 9900000009999.
# Thirteen digits because cl100k counts `<eventstream person_id="9900000000001">` as many tokens as it counted the
# first ids' `person_id="synth-0001"` (checked for all 9,999): every record renders to the same token count as
# before, so context packing, the instructions' depth metadata and the benchmark figures did not move with the ids.
# Every id has the same width, so text order is number order; the 99... range is far from MIMIC-IV's subject ids
# (10,000,000-19,999,999), and it fits a signed 64-bit integer (OMOP's person_id) and a JavaScript number.
SYNTHETIC_ID_BASE = 9_900_000_000_000
MAX_SYNTHETIC_PATIENTS = 9999


def synthetic_patient_id(number: int) -> str:
    """The id of the `number`-th (1-based) patient of a synthetic cohort: `9900000000001` for 1."""
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_SYNTHETIC_PATIENTS:
        raise MedalignError(f"a synthetic patient number runs from 1 to {MAX_SYNTHETIC_PATIENTS}, got {number!r}")
    return str(SYNTHETIC_ID_BASE + number)


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


def _generate(rng: random.Random, patient_id: str, tier: str, counter: TokenCounter,
              copy_forward: CopyForward | None = None) -> SyntheticPatient:
    check_patient_id(patient_id)
    if tier not in LENGTH_TIERS:
        raise MedalignError(f"unknown length tier {tier!r}; expected one of {', '.join(LENGTH_TIERS)}")
    sim = Simulator(rng, patient_id, tier, copy_forward)
    record = sim.run()
    total, from_end = evidence_depths(record, counter)
    writer = InstructionWriter(sim, record, rng)
    instructions = []
    for number, candidate in enumerate(writer.write(), start=1):
        oldest = max(from_end[eid] for eid in candidate.evidence)
        newest = min(from_end[eid] for eid in candidate.evidence)
        metadata = {
            "template": candidate.template,
            "taxonomy_category": TAXONOMY_GROUP,
            "anchor": "record_end" if candidate.anchor == writer.end else "earlier",
            "record_tokens": total,
            "evidence_tokens_from_end": oldest,
            "newest_evidence_tokens_from_end": newest,
            "evidence_depth": round(oldest / total, 4) if total else 0.0,
            **candidate.details,
        }
        if copy_forward is not None:
            metadata["evidence_copied_to"] = writer.copies_of(candidate.evidence)
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
        length_tier = rng.choices([name for name, _ in TIER_SHARES], weights=[share for _, share in TIER_SHARES])[0]
    patient = _generate(rng, patient_id, length_tier, counter or default_counter())
    return patient.record, patient.instructions


def _patient_rng(seed: int, index: int, stream: str = "") -> random.Random:
    # String seeds are hashed with SHA-512 by `random`, independent of PYTHONHASHSEED.
    return random.Random(f"medalign-rag-synthetic{stream}:{seed}:{index}")


def _assign_tiers(n_patients: int, rng: random.Random) -> list[str]:
    """Tier per patient: counts by largest remainder (so every cohort of 20 has the same spread), order shuffled."""
    exact = [(name, share * n_patients) for name, share in TIER_SHARES]
    counts = {name: int(value) for name, value in exact}
    leftover = n_patients - sum(counts.values())
    by_remainder = sorted(exact, key=lambda item: (-(item[1] - int(item[1])), item[0]))
    for name, _ in by_remainder[:leftover]:
        counts[name] += 1
    tiers = [name for name, _ in TIER_SHARES for _ in range(counts[name])]
    rng.shuffle(tiers)
    return tiers


def generate_cohort(
    out_dir: Path,
    n_patients: int = 20,
    seed: int = 7,
    progress: bool = False,
    *,
    counter: TokenCounter | None = None,
    copy_forward: float = 0.0,
) -> CohortSummary:
    """Write a synthetic cohort in MedAlign's release layout and return what was written.

    The release's own layout, which MedHELM's MedAlign reader opens as it is:
    `out_dir/medalign_ehr_xml/9900000000001.xml ...` (release XML with event ids; numeric person ids, see
    `synthetic_patient_id`), `out_dir/clinician-instruction-responses.tsv` (one row per reference answer,
    `annotator_num` `Annotator_1`, with time anchor, evidence event ids, category and metadata) and
    `out_dir/clinician-reviewed-model-responses.tsv` (every question, no model responses). The same `n_patients`
    and `seed` always give byte-identical files. Files of other patients already in `out_dir/medalign_ehr_xml`
    are left alone; an `out_dir/ehrs/` of the older layout holding records is refused.

    A patient's content is drawn from (seed, its position) alone, never from its id, so the ids could change
    without changing any record.

    `copy_forward` (0 to 1) is the chance that a note opens with a large span copied from the patient's previous
    note of the same kind before its own new text, as real notes do (see `notes.CopyForward`). 0 writes no copies
    and the same files as before the option existed. Gold evidence stays on the note that first wrote a fact, never
    on a copy; with copying on, each instruction's `metadata["evidence_copied_to"]` maps its evidence ids to the
    later notes that copied a span of them, so an evaluation can credit a copy if it wants to.
    """
    from medalign_rag.records.instructions import write_release_tables
    from medalign_rag.records.sources.medalign_xml import release_records_dir

    if isinstance(n_patients, bool) or not isinstance(n_patients, int) or n_patients < 1:
        raise MedalignError(f"n_patients must be a positive whole number, got {n_patients!r}", path=out_dir)
    if n_patients > MAX_SYNTHETIC_PATIENTS:
        raise MedalignError(
            f"n_patients must be at most {MAX_SYNTHETIC_PATIENTS} (ids are {synthetic_patient_id(1)}.."
            f"{synthetic_patient_id(MAX_SYNTHETIC_PATIENTS)}), got {n_patients}", path=out_dir)
    if isinstance(copy_forward, bool) or not isinstance(copy_forward, (int, float)) or not 0 <= copy_forward <= 1:
        raise MedalignError(f"copy_forward must be a share from 0 to 1, got {copy_forward!r}", path=out_dir)
    counter = counter or default_counter()
    out_dir = Path(out_dir)
    ehr_dir = release_records_dir(out_dir)

    tiers = _assign_tiers(n_patients, random.Random(f"medalign-rag-synthetic-tiers:{seed}"))
    summary = CohortSummary(out_dir=str(out_dir), seed=seed, token_counter=counter.name)
    all_instructions: list[Instruction] = []
    for index, tier in enumerate(tiers):
        patient_id = synthetic_patient_id(index + 1)
        copier = CopyForward(_patient_rng(seed, index, "-copy-forward"), copy_forward) if copy_forward else None
        patient = _generate(_patient_rng(seed, index), patient_id, tier, counter, copier)
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
    write_release_tables(all_instructions, out_dir)
    summary.n_instructions = len(all_instructions)
    summary.evidence_depths = [float(item.metadata["evidence_depth"]) for item in all_instructions]
    return summary
