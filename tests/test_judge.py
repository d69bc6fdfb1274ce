"""The LLM judge end to end against a real llama.cpp server (llama-cpp-python) running the packaged SmolLM2.

SmolLM2-135M is no judge of medicine: these tests check the plumbing (prompt, request, schema-constrained
reply, parsing, jury averaging, agreement with clinician ranks), not the quality of its verdicts.
"""

from __future__ import annotations

import pytest

from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.judge import (
    RUBRIC,
    JudgeItem,
    LLMJury,
    create_jury,
    judge_agreement,
    load_judge_template,
    parse_judge_reply,
)
from medalign_rag.records.model import ModelResponse
from tests.test_openai_server import MODEL_ALIAS, SERVER_CONTEXT, llama_server  # noqa: F401  (the server fixture)

CONTEXT = """<encounter type="inpatient" start_timestamp="2133-12-30 10:00:00" end_timestamp="2134-01-02 12:00:00">
  <event type="measurement" name="Hemoglobin A1c" unit="%">8.1</event>
</encounter>"""
QUESTION = "What was the most recent hemoglobin A1c?"


# --- no server needed ------------------------------------------------------------------------------------------


def test_default_template_renders_every_part():
    template = load_judge_template()
    prompt = template.render(JudgeItem(key=1, question=QUESTION, answer="8.1%", reference="8.1 %", context=CONTEXT))
    for part in (QUESTION, "8.1%", "8.1 %", "Hemoglobin A1c", *RUBRIC, "unsupported"):
        assert part in prompt
    bare = template.render(JudgeItem(key=1, question=QUESTION, answer="8.1%"))
    assert template.no_reference in bare and template.no_context in bare


def test_bad_judge_template_names_file_and_field(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("name: x\ntemplate: 'Rate {answer}'\n")
    with pytest.raises(MedalignError, match="question") as caught:
        load_judge_template(path)
    assert caught.value.path.endswith("judge.yaml") and caught.value.line == 2
    with pytest.raises(MedalignError, match="not found"):
        load_judge_template(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("reply", "valid", "accuracy", "unsupported"),
    [
        ('{"accuracy": 4, "completeness": 3, "clarity": 5, "unsupported": ["on warfarin"]}', True, 4, ("on warfarin",)),
        ('Here you go:\n```json\n{"accuracy": "2", "completeness": 2, "clarity": 1, "unsupported": []}\n```',
         True, 2, ()),
        ('{"accuracy": 6, "completeness": 3, "clarity": 5, "unsupported": []}', False, None, ()),
        ('{"accuracy": 4.5, "completeness": 3, "clarity": 5}', False, None, ()),
        ("The answer is good.", False, None, ()),
        ('{"accuracy": 4, "completeness": 3, ', False, None, ()),
    ],
)
def test_parse_judge_reply(reply, valid, accuracy, unsupported):
    score = parse_judge_reply(reply, "j")
    assert (score.valid, score.accuracy, score.unsupported) == (valid, accuracy, unsupported)
    assert score.raw == reply and (score.problem is None) == valid


def test_jury_rejects_bad_setup():
    with pytest.raises(MedalignError, match="at least one judge"):
        LLMJury([])
    with pytest.raises(MedalignError, match="unknown key"):
        create_jury([{"backend": "openai", "temperature": 1}])


# --- against the real server -----------------------------------------------------------------------------------


def _spec(base_url: str, name: str, response_format: str | None) -> dict:
    return {
        "backend": "openai",
        "backend_options": {"base_url": base_url, "model": MODEL_ALIAS, "context_length": SERVER_CONTEXT,
                            "tokenizer": "local", "name": name, "concurrency": 2},
        "response_format": response_format,
    }


@pytest.mark.slow
def test_jury_end_to_end_against_llama_cpp_server(llama_server):  # noqa: F811
    answers = {
        "good": "The most recent hemoglobin A1c was 8.1% (encounter of 2133-12-30).",
        "bad": "The patient has never had an A1c; they take warfarin daily.",
        "terse": "8.1",
    }
    items = [JudgeItem(key=("i1", model), question=QUESTION, answer=text, reference="8.1% on 2133-12-30",
                       context=CONTEXT) for model, text in answers.items()]
    jury = create_jury([_spec(llama_server, "constrained", "json_object"), _spec(llama_server, "free", None)])
    try:
        verdicts = jury.judge(items, max_tokens=96)
    finally:
        jury.close()
    assert [v.key for v in verdicts] == [item.key for item in items]
    for verdict in verdicts:
        constrained, free = verdict.scores
        assert (constrained.judge, free.judge) == ("constrained", "free")
        # Decoding constrained to the verdict schema always gives a valid verdict, even from a 135M model.
        assert constrained.valid, constrained.raw
        assert all(1 <= getattr(constrained, name) <= 5 for name in RUBRIC)
        assert free.raw  # the unconstrained judge answered something; whether it parses is up to the model
        assert verdict.valid_judges == 1 + free.valid
        assert verdict.overall is not None and 1.0 <= verdict.overall <= 5.0
        expected = sum(s.overall for s in verdict.scores if s.valid) / verdict.valid_judges
        assert verdict.overall == pytest.approx(expected)

    responses = [ModelResponse(instruction_id="i1", patient_id="p", question=QUESTION, model_name=model,
                               response=text, rank=rank)
                 for (model, text), rank in zip(answers.items(), (1, 3, 2))]
    overall = [v.overall for v in verdicts]
    if max(overall) == min(overall):  # a constant scorer cannot be ordered: agreement says so
        with pytest.raises(MedalignError, match="no instruction"):
            judge_agreement(responses, verdicts)
    else:
        agreement = judge_agreement(responses, verdicts, n_resamples=100)
        assert agreement.n_instructions == 1 and -1.0 <= agreement.mean <= 1.0


@pytest.mark.slow
def test_ablation_answers_are_judged_once_and_resumed(llama_server, tmp_path):  # noqa: F811
    from medalign_rag.evaluation.judge import judge_ablation_answers
    from medalign_rag.evaluation.runner import ItemResult
    from medalign_rag.records.model import Instruction

    instruction = Instruction(instruction_id="i1", patient_id="p1", question=QUESTION,
                              reference_answers=["8.1% on 2133-12-30"])
    items = [ItemResult(key=f"k{n}", instruction_id="i1", patient_id="p1", strategy="bm25", budget=2048,
                        context_tokens=10, available_tokens=100, n_chunks=1, n_gold_events=0, seconds_context=0.0,
                        answer=answer) for n, answer in enumerate(["8.1%", "It was 9.4%."])]
    items.append(items[0].model_copy(update={"key": "unanswered", "answer": None}))
    out = tmp_path / "judgements.jsonl"
    jury = create_jury([_spec(llama_server, "constrained", "json_object")])
    try:
        verdicts = judge_ablation_answers(jury, [instruction], items, {"k0": CONTEXT, "k1": CONTEXT}, out)
        assert set(verdicts) == {"k0", "k1"}  # the unanswered item is not judged
        assert all(v.valid_judges == 1 and 1.0 <= v.overall <= 5.0 for v in verdicts.values())
        lines = out.read_text().splitlines()
        assert len(lines) == 2
        again = judge_ablation_answers(jury, [instruction], items, {}, out)  # resumed from the file
        assert {k: v.overall for k, v in again.items()} == {k: v.overall for k, v in verdicts.items()}
        assert out.read_text().splitlines() == lines
    finally:
        jury.close()
