"""`bench` end to end: prepare data and indexes, run the ablation, write summary.csv, report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from medalign_rag.atomic import atomic_write_text
from medalign_rag.config import RunConfig
from medalign_rag.errors import MedalignError
from medalign_rag.evaluation.report import plot_metric, split_patients, summarize, write_report, write_summary_csv
from medalign_rag.evaluation.runner import AblationRunner, select_instructions
from medalign_rag.records.dataset import open_data
from medalign_rag.records.sources import RecordSource


class AblationOutcome(BaseModel):
    out_dir: Path
    n_instructions: int
    n_items: int
    rows: list[dict]
    summary_csv: Path
    report_md: Path
    plots: list[Path]
    notes: list[str]


def prepare_data(config: RunConfig, progress: bool = False) -> RecordSource:
    if not Path(config.data).exists():
        if config.synth is None:
            raise MedalignError("data folder not found (set `synth:` in the config to generate one)",
                                path=config.data)
        from medalign_rag.datasets.synthetic import generate_cohort

        generate_cohort(Path(config.data), n_patients=config.synth.patients, seed=config.synth.seed,
                        progress=progress, copy_forward=config.synth.copy_forward)
    return open_data(config.data, format=config.data_format)


def run_ablation(
    config: RunConfig,
    out_dir: Path,
    *,
    generator=None,
    progress_factory: Callable | None = None,
) -> AblationOutcome:
    from medalign_rag.index.builder import IndexBuilder

    out_dir = Path(out_dir)
    data = prepare_data(config, progress=progress_factory is not None)
    instructions = data.instructions()
    if not instructions:
        raise MedalignError("the data folder has no instructions (clinician-instruction-responses.tsv)",
                            path=config.data)
    known = set(data.patient_ids())
    missing = sorted({i.patient_id for i in instructions} - known)
    notes = []
    if missing:
        notes.append(f"{len(missing)} patients named by instructions have no record and were left out "
                     f"(first: {missing[0]})")
        instructions = [i for i in instructions if i.patient_id in known]
    instructions = select_instructions(instructions, config.max_instructions, config.seed)
    patient_ids = sorted({i.patient_id for i in instructions})

    runner = AblationRunner(config, data, out_dir, generator=generator)
    # only now: a run that fails on its data or prompt leaves no output folder holding nothing but its config
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", _dump_config(config))
    builder: IndexBuilder = runner.pipeline.builder
    total = len(instructions) * len(config.strategies) * len(set(config.budgets))
    if progress_factory is not None:
        with progress_factory() as progress:
            task = progress.add_task("indexing", total=len(patient_ids))
            builder.build(data, patient_ids, on_patient=lambda r: progress.advance(task), keep_going=False)
            task = progress.add_task("ablation", total=total)
            results = runner.run(instructions, on_item=lambda n: progress.advance(task, n))
    else:
        builder.build(data, patient_ids, keep_going=False)
        results = runner.run(instructions)

    if runner.skipped_budgets:
        notes.append(f"budgets {runner.skipped_budgets} exceed the answering model's context length "
                     f"({generator.context_length}): retrieval metrics only, no answers there")
    with_evidence = sum(1 for i in instructions if i.evidence_event_ids)
    notes.append(f"{len(instructions)} instructions over {len(patient_ids)} patients; {with_evidence} carry gold "
                 f"evidence event ids (evidence metrics use only those)")
    notes.append(f"tokens counted with {runner.counter.name}; {config.reserve_tokens} tokens reserved for the answer")
    if generator is not None:
        notes.append(f"answers by backend `{generator.name}`")
    if data.model_responses():
        notes.extend(_clinician_agreement(data, config))
    split = None
    if config.split is not None:
        split = split_patients(patient_ids, config.split.seed, config.split.test_fraction)
        notes.append(f"patient-level split (seed {config.split.seed}, test fraction {config.split.test_fraction}): "
                     f"{len(split[0])} tune / {len(split[1])} test patients")
    if config.primary_strategy is not None:
        notes.append(f"primary strategy declared in the config: `{config.primary_strategy}`")
    if config.judges and any(item.answer is not None for item in results):
        notes.extend(_judge_answers(config, runner, instructions, results, out_dir))
    rows = summarize(results, resamples=config.bootstrap_resamples, seed=config.seed)
    summary_csv = out_dir / "summary.csv"
    write_summary_csv(rows, summary_csv)
    plots = []
    if plot_metric(rows, "evidence_coverage", out_dir / "evidence_coverage.png", "gold evidence coverage"):
        plots.append(out_dir / "evidence_coverage.png")
    if plot_metric(rows, "answer_presence", out_dir / "answer_presence.png", "answer presence (LLM-free)"):
        plots.append(out_dir / "answer_presence.png")
    for metric, label in (("answer_match", "answer match, strict (FHIR-AgentBench)"), ("rouge_l", "ROUGE-L"),
                          ("embedding_f1", "embedding F1 (BERTScore-style)")):
        if plot_metric(rows, metric, out_dir / f"{metric}.png", label):
            plots.append(out_dir / f"{metric}.png")
    report_md = out_dir / "report.md"
    write_report(rows, report_md, title=f"Ablation: {config.name}", notes=notes, plots=[p.name for p in plots],
                 results=results, primary_strategy=config.primary_strategy, split=split,
                 resamples=config.bootstrap_resamples, seed=config.seed)
    return AblationOutcome(out_dir=out_dir, n_instructions=len(instructions), n_items=len(results), rows=rows,
                           summary_csv=summary_csv, report_md=report_md, plots=plots, notes=notes)


def _judge_answers(config: RunConfig, runner: AblationRunner, instructions, results, out_dir: Path) -> list[str]:
    """Score every answer with the configured LLM jury; scores join each item's answer metrics as judge_*."""
    from medalign_rag.evaluation.judge import JUDGE_FILE, create_jury, judge_ablation_answers, load_judge_template
    from medalign_rag.pipeline import AnswerRequest

    by_id = {instruction.instruction_id: instruction for instruction in instructions}
    answered = [item for item in results if item.answer is not None]
    contexts = {}
    for item in answered:  # the context each answer was written from, assembled again (deterministic)
        instruction = by_id[item.instruction_id]
        request = AnswerRequest(patient_id=item.patient_id, question=instruction.question, strategy=item.strategy,
                                budget=item.budget, time_anchor=instruction.time_anchor)
        contexts[item.key] = runner.pipeline.prepare(
            request, gold_event_ids=set(instruction.evidence_event_ids)).context.text
    jury = create_jury([spec.model_dump() for spec in config.judges], load_judge_template(config.judge_prompt))
    try:
        verdicts = judge_ablation_answers(jury, instructions, answered, contexts, out_dir / JUDGE_FILE)
        names = [judge.name for judge in jury.judges]
    finally:
        jury.close()
    for item in answered:
        verdict = verdicts.get(item.key)
        if verdict is None or verdict.overall is None:
            continue
        item.answer_metrics["judge_overall"] = verdict.overall
        for name, value in verdict.per_criterion.items():
            if value is not None:
                item.answer_metrics[f"judge_{name}"] = value
        item.answer_metrics["judge_unsupported_flags"] = float(verdict.unsupported_flags)
    valid = sum(1 for v in verdicts.values() if v.overall is not None)
    return [f"LLM jury ({', '.join(names)}): {valid} of {len(answered)} answers scored with a valid verdict "
            f"(rubric 1-5: accuracy, completeness, clarity; judge_overall is their mean)"]


def _clinician_agreement(data: RecordSource, config: RunConfig) -> list[str]:
    """Kendall's tau between each metric's ordering of the models' responses and the clinicians' ranks."""
    from medalign_rag.evaluation.agreement import metric_agreement

    references = {i.instruction_id: i.reference_answers for i in data.instructions()}
    try:
        results = metric_agreement(data.model_responses(), references, n_resamples=config.bootstrap_resamples,
                                   seed=config.seed)
    except MedalignError as exc:
        return [f"clinician agreement not computed: {exc}"]
    return [
        f"agreement with clinicians' ranks of model responses ({name}): Kendall's tau {r.mean:.3f} "
        f"[{r.lo:.3f}, {r.hi:.3f}] over {r.n_instructions} instructions"
        for name, r in results.items()
    ]


def _dump_config(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
