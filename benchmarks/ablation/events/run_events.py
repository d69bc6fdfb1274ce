"""Issue 13's table in one run: the `events` strategy against `temporal`, `hybrid` and `full` on FHIR-AgentBench dev.

Protocol: a fixed patient-level split of dev (a patient is in the test part when the first 32 bits of
sha256(patient id) fall below 0.4 of their range; `make_shorthand.is_test_patient`). Every rule, weight and
threshold of `events` was tuned on the tune part only; the figures below are on the test part unless a row says
otherwise. Intervals are clustered by patient: 1000 bootstrap resamples of patients, not of questions.

    medalign-rag convert mimic-iv-demo --src ../shared/data/mimic_iv_demo --meds ../shared/data/mimic_iv_demo_meds \
        --out data/mimic_fhir --tasks ../shared/data/fhir_agentbench/dev.csv   # records + vocabulary/ + questions
    medalign-rag synth --out data/synth_cf --patients 20 --seed 7 --copy-forward 0.3
    python benchmarks/ablation/events/run_events.py --data data/mimic_fhir --index-dir indexes/mimic_fhir \
        --synthetic data/synth_cf

Clinicians' shorthand is measured twice: on this project's rewrites of the tune part (`shorthand_tune.csv`,
make_shorthand.py; the strategy was tuned on them) and on a second, independent rewriter's rewrites of the test part
(`shorthand_test.csv`, make_shorthand_test.py; `--shorthand-test`; never used for tuning). `--shorthand-test` can be
repeated to add further held-out rewrites of the test part (e.g. a third rewriter's `shorthand_test2.csv`), each
reported as its own row under its file stem. The source's own
vocabulary reaches `events` through the record source (`vocabulary_terms()`, e.g. the `vocabulary/` folder that
`convert` writes beside `medalign_ehr_xml/`, holding MIMIC's d_items/d_labitems); `--vocabulary` adds folders through `$MEDALIGN_RAG_VOCABULARY`.

Per-item results go to `items.jsonl` in the output folder's `work/` (resumable, not committed); `summary.csv` and
`report.md` are written from them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_shorthand import is_test_patient  # noqa: E402

RESAMPLES = 1000


def clustered_interval(values: list[float], clusters: list[str], seed: int = 0) -> tuple[float, float, float]:
    """Mean and a 95% percentile interval from resampling whole clusters (patients) with replacement."""
    by_cluster: dict[str, list[float]] = defaultdict(list)
    for value, cluster in zip(values, clusters):
        by_cluster[cluster].append(value)
    sums = np.array([sum(v) for v in by_cluster.values()])
    counts = np.array([len(v) for v in by_cluster.values()])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sums), size=(RESAMPLES, len(sums)))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    return float(np.mean(values)), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference(a: dict[str, float], b: dict[str, float], cluster_of: dict[str, str],
                      seed: int = 0) -> tuple[float, float, float]:
    keys = sorted(set(a) & set(b))
    return clustered_interval([a[k] - b[k] for k in keys], [cluster_of[k] for k in keys], seed)


class Items:
    """Append-only per-item results, keyed by (part, wording, strategy, budget, question id)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[tuple, dict] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                self.rows[self.key(row)] = row
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(path, "a", encoding="utf-8")

    @staticmethod
    def key(row: dict) -> tuple:
        return row["part"], row["wording"], row["strategy"], row["budget"], row["question_id"]

    def add(self, row: dict) -> None:
        self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()
        self.rows[self.key(row)] = row


def evaluate(pipeline, instructions, part: str, wording: str, plan: dict[str, list[int]], items: Items,
             label: str) -> None:
    from medalign_rag.evaluation.metrics import evidence_coverage
    from medalign_rag.pipeline import AnswerRequest

    todo = [(i, s, b) for i in instructions for s, budgets in plan.items() for b in budgets
            if (part, wording, s, b, i.instruction_id) not in items.rows]
    started, done = time.time(), 0
    for instruction, strategy, budget in todo:
        request = AnswerRequest(patient_id=instruction.patient_id, question=instruction.question,
                                strategy=strategy, budget=budget, time_anchor=instruction.time_anchor)
        prepared = pipeline.prepare(request)
        context = prepared.context
        assert context.context_tokens <= context.available_tokens
        items.add({"part": part, "wording": wording, "strategy": strategy, "budget": budget,
                   "question_id": instruction.instruction_id, "patient_id": instruction.patient_id,
                   "category": instruction.category or "", "context_tokens": context.context_tokens,
                   "coverage": evidence_coverage(instruction.evidence_event_ids, context.event_ids)})
        done += 1
        if done % 200 == 0:
            print(f"  {label}: {done}/{len(todo)} items, {time.time() - started:.0f} s", flush=True)


def latency(pipeline, instructions, strategies: list[str], budget: int = 32768, repeats: int = 1,
            questions: int = 25) -> dict:
    """Median seconds for rank + pack at `budget` on the patient with the longest record, ranking recomputed."""
    from medalign_rag.context import assemble_context
    from medalign_rag.retrieval import make_retriever, retriever_spec

    by_patient: dict[str, list] = defaultdict(list)
    for instruction in instructions:
        by_patient[instruction.patient_id].append(instruction)
    sizes = {pid: sum(c.token_count for c in pipeline.patient_index(pid).chunks) for pid in by_patient}
    patient = max(sizes, key=sizes.get)
    index = pipeline.patient_index(patient)
    questions = by_patient[patient][:questions]
    result = {"patient": patient, "record_tokens": sizes[patient], "questions": len(questions)}
    for strategy in strategies:
        spec = retriever_spec(strategy)
        timings = []
        for instruction in questions:
            embedder = pipeline.builder.embedder if spec.needs_embedder else None
            embedder and embedder.embed_query(instruction.question)  # the query encode is shared by every strategy
            for _ in range(repeats):
                started = time.perf_counter()
                retriever = make_retriever(strategy, index, embedder=embedder, time_anchor=instruction.time_anchor,
                                           vocabulary=pipeline.vocabulary)
                events = getattr(retriever, "rank_events", None)
                ranking = events(instruction.question) if events else [p for p, _ in retriever.rank(
                    instruction.question)]
                assemble_context(index, strategy=strategy, budget=budget, counter=pipeline.counter, ranking=ranking,
                                 newest_events_first=spec.cls.newest_events_first,
                                 overhead_tokens=pipeline.overhead_tokens(instruction.question,
                                                                          instruction.time_anchor),
                                 time_anchor=instruction.time_anchor)
                timings.append(time.perf_counter() - started)
        result[strategy] = statistics.median(timings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--index-dir", required=True)
    parser.add_argument("--vocabulary", action="append", default=[])
    parser.add_argument("--shorthand", default=str(HERE / "shorthand_tune.csv"))
    parser.add_argument("--shorthand-test", action="append", default=None,
                        help="held-out rewrites of the test part (default: shorthand_test.csv from "
                             "make_shorthand_test.py); never used for tuning. Repeatable: the first file is reported "
                             "as wording `shorthand`, each further one under its file stem")
    parser.add_argument("--synthetic", default=None, help="a synthetic cohort generated with copy_forward")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--work", default=None)
    parser.add_argument("--sample-test", type=int, default=None, help="every k-th test question, about this many")
    parser.add_argument("--sample-tune", type=int, default=None, help="likewise for the tune part")
    parser.add_argument("--sample-synthetic", type=int, default=None)
    parser.add_argument("--latency-questions", type=int, default=25)
    parser.add_argument("--indexed-only", action="store_true",
                        help="only patients whose index is already built (no builds during the run)")
    args = parser.parse_args()

    if args.vocabulary:  # extra dictionary folders; the source's own `vocabulary_terms()` are read as well
        os.environ["MEDALIGN_RAG_VOCABULARY"] = os.pathsep.join(args.vocabulary)
    from medalign_rag.index.builder import IndexSettings
    from medalign_rag.pipeline import Pipeline
    from medalign_rag.records.dataset import open_data_folder

    out = Path(args.out)
    work = Path(args.work) if args.work else out / "work"
    items = Items(work / "items.jsonl")
    source = open_data_folder(args.data)
    pipeline = Pipeline(source, IndexSettings(index_dir=args.index_dir))
    with_evidence = sorted((i for i in source.instructions() if i.evidence_event_ids), key=lambda i: i.instruction_id)
    if args.indexed_only:
        built = {p.parent.name for p in Path(args.index_dir).glob("*/manifest.json")}
        print(f"indexed-only: {len({i.patient_id for i in with_evidence} & built)} of "
              f"{len({i.patient_id for i in with_evidence})} patients", flush=True)
        with_evidence = [i for i in with_evidence if i.patient_id in built]
    test_all = [i for i in with_evidence if is_test_patient(i.patient_id)]
    tune_all = [i for i in with_evidence if not is_test_patient(i.patient_id)]
    test, tune = sample(test_all, args.sample_test), sample(tune_all, args.sample_tune)
    with open(args.shorthand, newline="", encoding="utf-8") as handle:
        rewritten = {row["question_id"]: row["shorthand"] for row in csv.DictReader(handle)}
    tune_short = [i.model_copy(update={"question": rewritten[i.instruction_id]}) for i in tune
                  if i.instruction_id in rewritten]
    test_shorts: list[tuple[str, list]] = []  # (wording, rewritten test questions), one per held-out file
    for number, path in enumerate(args.shorthand_test or [str(HERE / "shorthand_test.csv")]):
        wording = "shorthand" if number == 0 else Path(path).stem
        if number and wording in {"written", "shorthand"} | {w for w, _ in test_shorts}:
            parser.error(f"--shorthand-test {path}: its name {wording!r} is taken; rename the file")
        if not Path(path).is_file():
            continue
        with open(path, newline="", encoding="utf-8") as handle:
            held_out = {row["question_id"]: row["shorthand"] for row in csv.DictReader(handle)}
        test_shorts.append((wording, [i.model_copy(update={"question": held_out[i.instruction_id]}) for i in test
                                      if i.instruction_id in held_out]))
    print(f"test part: {len(test)} questions over {len({i.patient_id for i in test})} patients; tune part: "
          f"{len(tune)} over {len({i.patient_id for i in tune})}", flush=True)

    started = time.time()
    sampled = {"test": (len(test_all), len(test)), "tune": (len(tune_all), len(tune))}
    stages = [
        (pipeline, test, "test", "written", {"events": [512, 1024, 2048, 8192], "temporal": [2048, 8192],
                                             "hybrid": [2048], "full": [32768]}),
        (pipeline, tune, "tune", "written", {"events": [2048, 8192], "temporal": [2048]}),
        (pipeline, tune_short, "tune", "shorthand", {"events": [2048], "temporal": [2048]}),
    ] + [(pipeline, short, "test", wording, {"events": [2048], "temporal": [2048]}) for wording, short in test_shorts]
    if args.synthetic:
        synth_source = open_data_folder(args.synthetic)
        synth_pipeline = Pipeline(synth_source, IndexSettings(index_dir=Path(args.synthetic) / "indexes"))
        synth_all = sorted((i for i in synth_source.instructions() if i.evidence_event_ids),
                           key=lambda i: i.instruction_id)
        if args.indexed_only:
            built = {p.parent.name for p in (Path(args.synthetic) / "indexes").glob("*/manifest.json")}
            synth_all = [i for i in synth_all if i.patient_id in built]
        synth = sample(synth_all, args.sample_synthetic)
        sampled["synthetic"] = (len(synth_all), len(synth))
        stages.append((synth_pipeline, synth, "synthetic", "written", {"events": [2048], "temporal": [2048]}))
    timing: dict = {}
    for stage_pipeline, instructions, part, wording, plan in stages:
        evaluate(stage_pipeline, instructions, part, wording, plan, items, f"{part}/{wording}")
        write_outputs(out, items, timing, time.time() - started, sampled)  # partial results survive a stop
    timing = latency(pipeline, test, ["hybrid", "temporal", "events"], questions=args.latency_questions)
    write_outputs(out, items, timing, time.time() - started, sampled)


def sample(instructions: list, about: int | None) -> list:
    """A deterministic subsample: every k-th question in id order, k chosen to give about `about`."""
    if not about or about >= len(instructions):
        return instructions
    step = -(-len(instructions) // about)
    return instructions[::step]


def write_outputs(out: Path, items: Items, timing: dict, seconds: float, sampled: dict) -> None:
    groups: dict[tuple, dict[str, float]] = defaultdict(dict)
    cluster_of: dict[str, str] = {}
    category_of: dict[str, str] = {}
    for row in items.rows.values():
        if row["coverage"] is None:
            continue
        groups[(row["part"], row["wording"], row["strategy"], row["budget"])][row["question_id"]] = row["coverage"]
        cluster_of[row["question_id"]] = row["patient_id"]
        category_of[row["question_id"]] = row["category"]

    summary = []
    for key in sorted(groups):
        values = groups[key]
        mean, lo, hi = clustered_interval(list(values.values()), [cluster_of[q] for q in values])
        summary.append({"part": key[0], "wording": key[1], "strategy": key[2], "budget": key[3], "n": len(values),
                        "evidence_coverage": round(mean, 4), "ci_lo": round(lo, 4), "ci_hi": round(hi, 4)})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)

    def cell(part, wording, strategy, budget) -> str:
        values = groups.get((part, wording, strategy, budget))
        if not values:
            return "not measured"
        mean, lo, hi = clustered_interval(list(values.values()), [cluster_of[q] for q in values])
        return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"

    def diff(a: tuple, b: tuple) -> str:
        if a not in groups or b not in groups:
            return "not measured"
        mean, lo, hi = paired_difference(groups[a], groups[b], cluster_of)
        return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    full32 = groups.get(("test", "written", "full", 32768), {})
    full_mean = float(np.mean(list(full32.values()))) if full32 else None
    reach = "not measured"
    if full_mean is not None:
        for budget in (512, 1024, 2048, 8192):
            values = groups.get(("test", "written", "events", budget))
            if values and np.mean(list(values.values())) >= full_mean:
                reach = f"{budget} (`events` at {budget}: {np.mean(list(values.values())):.3f} >= {full_mean:.3f})"
                break
    tune_test = "not measured"
    if ("tune", "written", "events", 2048) in groups and ("test", "written", "events", 2048) in groups:
        tune_mean = np.mean(list(groups[("tune", "written", "events", 2048)].values()))
        test_mean = np.mean(list(groups[("test", "written", "events", 2048)].values()))
        tune_test = f"{tune_mean - test_mean:+.3f} (tune {tune_mean:.3f}, test {test_mean:.3f})"

    lines = [
        "# `events`: event-level, concept-aware selection (issue 13)",
        "",
        "FHIR-AgentBench dev over the MIMIC-IV demo, retrieval only (evidence coverage: share of an instruction's gold",
        "evidence events that reach the context). Fixed patient-level split (sha256 of the patient id; 40% of",
        "patients are test); `events` was tuned on the tune part only. Intervals: 95%, clustered by patient (1000",
        f"bootstrap resamples of patients). One run of `run_events.py`, {seconds / 60:.1f} min on the shared 2-core",
        "machine (other jobs running).",
        "",
        "| measure (test part of dev; clustered 95% interval) | before (`temporal`) | `events` | goal |",
        "|---|---|---|---|",
        f"| evidence coverage @2k | {cell('test', 'written', 'temporal', 2048)} | "
        f"{cell('test', 'written', 'events', 2048)} | >= 0.85 |",
        f"| evidence coverage @8k | {cell('test', 'written', 'temporal', 8192)} | "
        f"{cell('test', 'written', 'events', 8192)} | >= 0.95 |",
        f"| `events` minus `temporal` @2k (paired) | | "
        f"{diff(('test', 'written', 'events', 2048), ('test', 'written', 'temporal', 2048))} | |",
        f"| tokens to reach `full`@32k's coverage ({cell('test', 'written', 'full', 32768)}) | 2k (`temporal`) | "
        f"{reach} | <= 1k |",
        f"| synthetic cohort @2k, copied-forward notes on | {cell('synthetic', 'written', 'temporal', 2048)} | "
        f"{cell('synthetic', 'written', 'events', 2048)} | >= 0.90 |",
        f"| tune-part minus test-part coverage @2k | | {tune_test} | <= 0.02 |",
        f"| tune part: evidence coverage @2k / @8k | | {cell('tune', 'written', 'events', 2048)} / "
        f"{cell('tune', 'written', 'events', 8192)} | |",
        f"| coverage @2k, clinical shorthand minus as written (tune part, paired) | "
        f"{diff(('tune', 'shorthand', 'temporal', 2048), ('tune', 'written', 'temporal', 2048))} | "
        f"{diff(('tune', 'shorthand', 'events', 2048), ('tune', 'written', 'events', 2048))} | within 0.03 |",
        f"| coverage @2k, held-out shorthand (second rewriter, test part, never tuned on) minus as written "
        f"(paired) | {diff(('test', 'shorthand', 'temporal', 2048), ('test', 'written', 'temporal', 2048))} | "
        f"{diff(('test', 'shorthand', 'events', 2048), ('test', 'written', 'events', 2048))} | within 0.03 |",
        *(f"| coverage @2k, held-out shorthand `{wording}` (test part, never tuned on) minus as written (paired) | "
          f"{diff(('test', wording, 'temporal', 2048), ('test', 'written', 'temporal', 2048))} | "
          f"{diff(('test', wording, 'events', 2048), ('test', 'written', 'events', 2048))} | within 0.03 |"
          for wording in sorted({k[1] for k in groups if k[0] == 'test'} - {'written', 'shorthand'})),
        (f"| median latency, rank + pack at 32k, {timing['record_tokens']:,}-token record ({timing['questions']} "
         f"questions) | {timing['temporal'] * 1000:.1f} ms (`hybrid` {timing['hybrid'] * 1000:.1f} ms) | "
         f"{timing['events'] * 1000:.1f} ms | <= 50 ms |") if timing else
        "| median latency, rank + pack at 32k | not measured yet | not measured yet | <= 50 ms |",
        "",
        "Questions measured per part (deterministic every-k-th subsample in id order where a size is given): "
        + "; ".join(f"{part}: {'all ' + str(n) if k >= n else f'{k} of {n}'}"
                    for part, (n, k) in sampled.items()) + ".",
        "",
        "## All cells",
        "",
        "| part | wording | strategy | budget | n | evidence coverage [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(f"| {row['part']} | {row['wording']} | {row['strategy']} | {row['budget']} | {row['n']} | "
                     f"{row['evidence_coverage']:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}] |")
    def per_type(title: str, part: str, budget: int, always: bool = False) -> list[str]:
        events_by_q = groups.get((part, "written", "events", budget), {})
        temporal_by_q = groups.get((part, "written", "temporal", budget), {})
        if not (events_by_q or always):
            return []
        rows = ["", f"## {title}", "", "| category | n | `temporal` | `events` | difference |", "|---|---|---|---|---|"]
        for category in sorted({category_of[q] for q in events_by_q}):
            keys = [q for q in events_by_q if category_of[q] == category and q in temporal_by_q]
            if keys:
                e = np.mean([events_by_q[q] for q in keys])
                t = np.mean([temporal_by_q[q] for q in keys])
                rows.append(f"| {category} | {len(keys)} | {t:.3f} | {e:.3f} | {e - t:+.3f} |")
        return rows

    lines += per_type("Per question type (test part, @2k)", "test", 2048, always=True)
    lines += per_type("Per question type (test part, @8k)", "test", 8192)
    lines += per_type("Per question type (tune part, @2k; what `events` was tuned on)", "tune", 2048)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
