"""The ablation runner on a small synthetic cohort: outputs, resume after an interruption, honest goal line."""

import csv
import json
import re
from pathlib import Path

import pytest

from medalign_rag.config import RunConfig, load_run_config
from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.ablation import run_ablation
from medalign_rag.evaluation.report import goal_statement
from medalign_rag.index.builder import IndexSettings


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("ablation")
    return RunConfig(
        name="t",
        data=root / "cohort",
        synth={"patients": 3, "seed": 11},
        index=IndexSettings(index_dir=root / "idx"),
        strategies=["full", "bm25", "recency", "oracle"],
        budgets=[2048, 8192],
        bootstrap_resamples=200,
        primary_strategy="bm25",
        split={"seed": 0, "test_fraction": 0.67},
    )


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ablation_writes_every_output_and_resumes_without_redoing_work(config, tmp_path):
    out = tmp_path / "run"
    outcome = run_ablation(config, out)
    results = read_results(out / "results.jsonl")
    n_expected = outcome.n_instructions * 4 * 2
    assert outcome.n_items == len(results) == n_expected
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["strategy"], r["budget"]) for r in rows} == {(s, str(b)) for s in config.strategies for b in (2048, 8192)}
    for column in ("strategy", "budget", "n", "evidence_coverage", "evidence_coverage_lo", "evidence_coverage_hi",
                   "coverage_patient_lo", "coverage_patient_hi", "coverage_macro", "coverage_all", "coverage_any",
                   "diff_vs_full32k", "diff_vs_full32k_lo", "diff_vs_full32k_hi"):
        assert column in rows[0]
    for item in results:  # per item: coverage variants and the question's type
        if item["evidence_coverage"] is not None:
            assert item["coverage_any"] >= item["evidence_coverage"] >= item["coverage_all"]
        assert item["question_type"]
    for row in rows:
        assert float(row["evidence_coverage_lo"]) <= float(row["evidence_coverage"]) <= float(row["evidence_coverage_hi"])
    oracle = {r["budget"]: float(r["evidence_coverage"]) for r in rows if r["strategy"] == "oracle"}
    full = {r["budget"]: float(r["evidence_coverage"]) for r in rows if r["strategy"] == "full"}
    assert oracle["2048"] >= full["2048"], "the oracle is an upper bound"
    assert all(r["context_tokens"] <= r["budget"] for r in results)
    assert (out / "evidence_coverage.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    verdict = re.search(r"\*\*(NOT MET|MET|TIE|UNDECIDED[^*]*)\*\*", report)
    assert "Goal" in report and verdict, "the goal line states a verdict"
    assert "declared before the run, on the test part" in report and "`bm25` at 2048" in report
    assert "## Tune/test protocol" in report and "## Paired differences" in report

    # Interrupt: keep the first half and a torn line, as a kill mid-write would leave it.
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    kept = lines[: len(lines) // 2]
    (out / "results.jsonl").write_text("".join(kept) + lines[len(lines) // 2][:40])
    before = {json.loads(line)["key"]: line for line in kept}
    resumed = run_ablation(config, out)
    after = read_results(out / "results.jsonl")
    assert resumed.n_items == n_expected and len(after) == n_expected
    assert len({r["key"] for r in after}) == n_expected, "no item computed twice"
    for line in (out / "results.jsonl").read_text().splitlines(keepends=True)[: len(kept)]:
        assert json.loads(line)["key"] in before, "finished items are kept as they were"

    # A changed budget list reuses the budgets already done.
    config_more = config.model_copy(update={"budgets": [2048, 8192, 4096]})
    again = run_ablation(config_more, out)
    assert again.n_items == outcome.n_instructions * 4 * 3
    assert len(read_results(out / "results.jsonl")) == again.n_items


def test_goal_statement_is_honest():
    def row(strategy, budget, mean, lo, hi):
        return {"strategy": strategy, "budget": budget, "evidence_coverage": mean,
                "evidence_coverage_lo": lo, "evidence_coverage_hi": hi}

    rows = [row("full", 2048, 0.1, 0.05, 0.15), row("full", 32768, 0.8, 0.7, 0.9),
            row("bm25", 2048, 0.6, 0.5, 0.7), row("oracle", 2048, 1.0, 1.0, 1.0)]
    assert "NOT MET" in goal_statement(rows)
    rows[2] = row("bm25", 2048, 0.85, 0.8, 0.9)
    text = goal_statement(rows)
    assert "**MET**" in text and "bm25" in text and "overlap" in text


def test_config_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nbudgets: [2048, lots]\n")
    with pytest.raises(MedalignError, match=r"bad\.yaml.*budgets"):
        load_run_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(MedalignError, match=r"broken\.yaml:\d+"):
        load_run_config(broken)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("data: x\nstrategy: [full]\n")
    with pytest.raises(MedalignError, match="strategy"):
        load_run_config(unknown)


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    for path in root.glob("*.yaml"):
        config = load_run_config(path)
        assert config.budgets and config.strategies


def test_bench_reports_agreement_with_clinician_ranks(tmp_path):
    from medalign_rag.evaluation.ablation import _clinician_agreement
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.records.serialize import write_release_xml
    from tests.factories import make_record

    write_release_xml(make_record(1, patient_id="p1"), tmp_path / "ehrs" / "p1.xml")
    rows = ["instruction_id\tquestion\tperson_id\tfilename\tmodel_name\tmodel_response\tbinary_correct\tmodel_rank"
            "\tclinician_response"]
    answers = [("gpt", "Creatinine was 1.4 mg/dL on 2019-03-04.", 1), ("small", "Creatinine 1.4.", 2),
               ("bad", "No allergies are recorded.", 3)]
    for k in range(3):
        for name, text, rank in answers:
            rows.append(f"i{k}\tcreatinine?\tp1\tp1.xml\t{name}\t{text}\t1\t{rank}\tCreatinine was 1.4 mg/dL on 2019-03-04.")
    (tmp_path / "clinician-reviewed-model-responses.tsv").write_text("\n".join(rows) + "\n")
    config = RunConfig(data=tmp_path, bootstrap_resamples=100)
    notes = _clinician_agreement(open_data_folder(tmp_path), config)
    assert len(notes) == 2
    assert all("Kendall's tau 1.000" in note and "3 instructions" in note for note in notes)


@pytest.mark.slow
def test_bench_answers_with_a_real_model_through_the_one_answer_path(config, tmp_path):
    """bench and ask share Pipeline.prepare/complete: the bench item and a direct Pipeline.answer for the same
    request see the same context, and the local model (SmolLM2 on the CPU) really answers."""
    pytest.importorskip("transformers")
    from medalign_rag.generation import create_generator
    from medalign_rag.generation.local import find_smollm2_gguf
    from medalign_rag.pipeline import AnswerRequest, Pipeline
    from medalign_rag.records.dataset import open_data

    try:
        find_smollm2_gguf()
    except MedalignError as error:
        pytest.skip(str(error))
    generator = create_generator("local", cache_dir=tmp_path / "models", batch_size=2, threads=1)
    try:
        answered = config.model_copy(update={"strategies": ["full", "temporal"], "budgets": [2048],
                                             "answer_max_instructions": 1, "max_instructions": 2,
                                             "max_new_tokens": 16})
        run_ablation(answered, tmp_path / "run", generator=generator)
        items = read_results(tmp_path / "run" / "results.jsonl")
        with_answers = [i for i in items if i["answer"] is not None]
        assert len(with_answers) == 2 and all(i["backend"] == generator.name for i in with_answers)
        assert all(0 < i["completion_tokens"] <= 16 and i["prompt_tokens"] <= 2048 for i in with_answers)

        item = with_answers[0]
        data = open_data(config.data)
        instruction = {i.instruction_id: i for i in data.instructions()}[item["instruction_id"]]
        pipeline = Pipeline(data, config.index, generator=generator, max_new_tokens=16)
        [direct] = pipeline.answer([AnswerRequest(patient_id=instruction.patient_id, question=instruction.question,
                                                  strategy=item["strategy"], budget=2048,
                                                  time_anchor=instruction.time_anchor)])
        assert direct.context_tokens == item["context_tokens"]
        assert direct.prompt_tokens == item["prompt_tokens"]
        assert direct.answer == item["answer"], "greedy decoding of the same prompt gives the same answer"
    finally:
        generator.close()
