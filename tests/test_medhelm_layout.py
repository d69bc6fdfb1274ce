"""What we write opens in MedHELM's MedAlign reader (re-implemented in tests/medhelm_reader.py from HELM's source),
and the older layout, which that reader rejected, still opens in ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from medalign_rag.datasets.synthetic import generate_cohort, generate_patient
from medalign_rag.records.dataset import open_data_folder
from medalign_rag.records.instructions import write_instruction_table, write_model_responses_table
from medalign_rag.records.serialize import write_release_xml
from tests.medhelm_reader import read_like_medhelm

pytest.importorskip("pandas")


def test_a_synthetic_cohort_opens_in_medhelms_reader(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    summary = generate_cohort(out, n_patients=3, seed=3)
    ours = open_data_folder(out).instructions()
    instances = read_like_medhelm(out)
    assert len(instances) == len(ours) == summary.n_instructions > 0
    assert {instance.patient_id for instance in instances} == {int(p.patient_id) for p in summary.patients}
    for instance, instruction in zip(instances, ours):
        assert instance.instruction_id == instruction.instruction_id
        assert instance.patient_id == int(instruction.patient_id)
        assert instance.question == instruction.question
        assert instance.clinician_response == instruction.reference_answers[0]
        assert instance.ehr == (out / "medalign_ehr_xml" / f"{instruction.patient_id}.xml").read_text(encoding="utf-8")


def _older_layout(root: Path) -> Path:
    """What `synth` wrote before: `ehrs/synth-0001.xml`, annotator `1`, no model-response table."""
    import random

    record, instructions = generate_patient(random.Random(1), "synth-0001", length_tier="short")
    write_release_xml(record, root / "ehrs" / "synth-0001.xml")
    write_instruction_table(instructions, root / "clinician-instruction-responses.tsv")
    return root


def test_the_older_layout_fails_in_medhelms_reader_but_opens_in_ours(tmp_path: Path) -> None:
    """The control that shows the reader above can fail: each of the older layout's differences stops it."""
    root = _older_layout(tmp_path / "old")
    folder = open_data_folder(root)
    assert folder.ehrs_dir == root / "ehrs" and folder.patient_ids() == ["synth-0001"]
    assert len(folder.instructions()) >= 6 and folder.load_record("synth-0001").n_events > 0

    with pytest.raises(FileNotFoundError):  # no model-response table to take the questions from
        read_like_medhelm(root)
    (root / "clinician-reviewed-model-responses.tsv").write_text(
        "instruction_id\tquestion\tperson_id\nq1\tAny A1c?\tsynth-0001\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError):  # no medalign_ehr_xml/
        read_like_medhelm(root)
    (root / "ehrs").rename(root / "medalign_ehr_xml")
    with pytest.raises(ValueError):  # int("synth-0001")
        read_like_medhelm(root)


def test_annotator_numbers_without_the_release_prefix_give_medhelm_no_references(tmp_path: Path) -> None:
    import random

    record, instructions = generate_patient(random.Random(1), "9900000000001", length_tier="short")
    write_release_xml(record, tmp_path / "medalign_ehr_xml" / "9900000000001.xml")
    write_model_responses_table([], tmp_path / "clinician-reviewed-model-responses.tsv", questions=instructions)
    write_instruction_table(instructions, tmp_path / "clinician-instruction-responses.tsv")  # annotator_num 1
    assert read_like_medhelm(tmp_path) == []
    write_instruction_table(instructions, tmp_path / "clinician-instruction-responses.tsv", annotator_prefix="Annotator_")
    assert len(read_like_medhelm(tmp_path)) == len(instructions)
    assert len(open_data_folder(tmp_path).instructions()) == len(instructions)  # we read both forms
