"""How MedHELM (HELM's MedAlign scenario) reads a MedAlign folder, re-implemented for the tests from reading it.

Source read: stanford-crfm/helm, src/helm/benchmark/scenarios/medalign_scenario_helper.py (`return_dataset_dataframe`,
`get_instructions`, `get_ehrs`, `extract_patient_id_from_fname`, `pack_and_trim_prompts`,
`add_reference_responses`) and medalign_scenario.py, at commit 63754d05db6f874e41a395880fb573890a13e791.
Not a copy: the same files, columns, id parsing and annotator filter, without the prompt packing and tokenizers.

What that reader relies on:
- the questions come from `clinician-reviewed-model-responses.tsv` (pandas, tab-separated), which needs the columns
  instruction_id, question, person_id; a later row of one instruction_id replaces an earlier one;
- the records are every file in `medalign_ehr_xml/`, keyed by `int(file_name.split('.')[0])`: a file name that
  does not start with a number (a stray dot-file too) makes the reader fail;
- each question's `int(person_id)` must name one of those files (a KeyError otherwise);
- the reference answers are the rows of `clinician-instruction-responses.tsv` whose `annotator_num` is the string
  `Annotator_1`, inner-joined to the questions on instruction_id (a question without such a row is dropped).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MedhelmInstance:
    instruction_id: str
    patient_id: int
    question: str
    ehr: str
    clinician_response: str


def read_like_medhelm(data_path: Path) -> list[MedhelmInstance]:
    import pandas as pd

    questions_path = data_path / "clinician-reviewed-model-responses.tsv"
    references_path = data_path / "clinician-instruction-responses.tsv"
    ehr_dir = data_path / "medalign_ehr_xml"
    for required in (questions_path, references_path):
        if not required.is_file():
            raise FileNotFoundError(required)

    questions = pd.read_csv(questions_path, sep="\t")
    if not {"instruction_id", "question", "person_id"} <= set(questions.columns):
        raise ValueError(f"{questions_path}: missing instruction_id, question or person_id")
    by_instruction = {row["instruction_id"]: (row["question"], row["person_id"]) for _, row in questions.iterrows()}

    if not ehr_dir.is_dir():
        raise FileNotFoundError(ehr_dir)
    ehrs: dict[int, str] = {}
    for name in os.listdir(ehr_dir):
        ehrs[int(name.split(".")[0])] = (ehr_dir / name).read_text(encoding="utf-8")

    prompts = {}
    for instruction_id, (question, person_id) in by_instruction.items():
        prompts[instruction_id] = (question, int(person_id), ehrs[int(person_id)])

    references = pd.read_csv(references_path, sep="\t")
    references = references.query("annotator_num == 'Annotator_1'")[["instruction_id", "clinician_response"]]
    joined = references.merge(
        pd.DataFrame({"instruction_id": list(prompts)}), on="instruction_id", how="inner"
    )
    return [
        MedhelmInstance(
            instruction_id=str(row["instruction_id"]),
            patient_id=prompts[row["instruction_id"]][1],
            question=prompts[row["instruction_id"]][0],
            ehr=prompts[row["instruction_id"]][2],
            clinician_response=row["clinician_response"],
        )
        for _, row in joined.iterrows()
    ]
