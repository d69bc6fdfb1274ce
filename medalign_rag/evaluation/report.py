"""Summaries of an ablation: summary.csv (one row per strategy and budget), report.md and PNG plots.

Questions cluster in patients and every strategy answers the same questions, so the figures that matter are
patient-clustered (`evaluation.statistics`): each coverage gets a clustered interval (`coverage_patient_lo/hi`)
beside the per-question one kept from before (`evidence_coverage_lo/hi`), a per-patient macro average, the
"all gold covered" and "any gold covered" variants, and paired differences against `full` (at the same budget
and at the largest budget) whose verdict says "better" only when the clustered interval excludes 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from medalign_rag.atomic import atomic_path, atomic_write_text
from medalign_rag.evaluation.metrics import bootstrap_interval
from medalign_rag.evaluation.runner import ItemResult
from medalign_rag.evaluation.statistics import PairedDifference, clustered_mean, macro_mean, paired_difference
from medalign_rag.retrieval.registry import strategy_names

BASELINE = "full"


def _mean_ci(values: Sequence[float], resamples: int, seed: int) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    mean, lo, hi = bootstrap_interval(list(values), n_resamples=resamples, seed=seed)
    return mean, lo, hi


def _clustered(items: Sequence[ItemResult], value, resamples: int, seed: int):
    values = [value(i) for i in items]
    return clustered_mean(values, [i.patient_id for i in items], n_resamples=resamples, seed=seed)


def _paired(items: Sequence[ItemResult], baseline: Sequence[ItemResult], resamples: int, seed: int,
            value=lambda i: i.evidence_coverage) -> PairedDifference:
    return paired_difference(
        {i.instruction_id: value(i) for i in items}, {i.instruction_id: value(i) for i in baseline},
        {i.instruction_id: i.patient_id for i in [*items, *baseline]}, n_resamples=resamples, seed=seed,
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_results(results: Sequence[ItemResult]) -> dict[tuple[str, int], list[ItemResult]]:
    groups: dict[tuple[str, int], list[ItemResult]] = defaultdict(list)
    for item in results:
        groups[(item.strategy, item.budget)].append(item)
    return groups


def summarize(results: list[ItemResult], resamples: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (strategy, budget); see the module docstring for the columns."""
    groups = group_results(results)
    answer_metric_names = sorted({name for item in results for name in item.answer_metrics})
    retrieval_names = sorted({name for item in results for name in item.retrieval})
    budgets = sorted({budget for _, budget in groups})
    full_largest = groups.get((BASELINE, budgets[-1])) if budgets else None
    rows = []
    order = {s: i for i, s in enumerate(strategy_names())}
    for (strategy, budget), items in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1])):
        coverage = [i.evidence_coverage for i in items if i.evidence_coverage is not None]
        mean, lo, hi = _mean_ci(coverage, resamples, seed)
        row = {
            "strategy": strategy,
            "budget": budget,
            "n": len(items),
            "n_with_evidence": len(coverage),
            "evidence_coverage": mean,
            "evidence_coverage_lo": lo,
            "evidence_coverage_hi": hi,
            "context_tokens_mean": sum(i.context_tokens for i in items) / len(items),
            "context_ms_median": sorted(i.seconds_context for i in items)[len(items) // 2] * 1000,
        }
        if coverage:
            clustered = _clustered(items, lambda i: i.evidence_coverage, resamples, seed)
            macro = macro_mean([i.evidence_coverage for i in items], [i.patient_id for i in items],
                               n_resamples=resamples, seed=seed)
            row["coverage_patient_lo"], row["coverage_patient_hi"] = clustered.lo, clustered.hi
            row["n_patients"] = clustered.n_clusters
            row["coverage_macro"] = macro.mean
            row["coverage_macro_lo"], row["coverage_macro_hi"] = macro.lo, macro.hi
            row["coverage_all"] = _mean([i.coverage_all for i in items if i.coverage_all is not None])
            row["coverage_any"] = _mean([i.coverage_any for i in items if i.coverage_any is not None])
            row["coverage_legacy_encounter"] = _mean(
                [i.coverage_legacy_encounter for i in items if i.coverage_legacy_encounter is not None])
            same_budget = groups.get((BASELINE, budget))
            if same_budget is not None:
                diff = _paired(items, same_budget, resamples, seed)
                row["diff_vs_full"], row["diff_vs_full_lo"], row["diff_vs_full_hi"] = diff.mean, diff.lo, diff.hi
                row["diff_vs_full_verdict"] = diff.verdict
            if full_largest is not None:
                diff = _paired(items, full_largest, resamples, seed)
                row["diff_vs_full32k"], row["diff_vs_full32k_lo"], row["diff_vs_full32k_hi"] = (
                    diff.mean, diff.lo, diff.hi)
                row["diff_vs_full32k_verdict"] = diff.verdict
        presence = [i.answer_presence for i in items if i.answer_presence is not None]
        if presence:
            estimate = _clustered(items, lambda i: i.answer_presence, resamples, seed)
            row["answer_presence"], row["answer_presence_lo"], row["answer_presence_hi"] = (
                estimate.mean, estimate.lo, estimate.hi)
            row["answer_presence_n"] = len(presence)
        for name in retrieval_names:
            values = [i.retrieval[name] for i in items if name in i.retrieval]
            row[name] = sum(values) / len(values) if values else None
        for name in answer_metric_names:
            values = [i.answer_metrics[name] for i in items if name in i.answer_metrics]
            m, l, h = _mean_ci(values, resamples, seed)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_n"] = m, l, h, len(values)
        answered = [i for i in items if i.answer is not None]
        if answered:
            row["answers"] = len(answered)
            row["prompt_tokens_mean"] = sum(i.prompt_tokens or 0 for i in answered) / len(answered)
            row["completion_tokens_mean"] = sum(i.completion_tokens or 0 for i in answered) / len(answered)
            row["latency_s_mean"] = sum(i.latency_s or 0 for i in answered) / len(answered)
        rows.append(row)
    return rows


def write_summary_csv(rows: list[dict], path: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


def _fmt(mean, lo, hi) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if lo is None or math.isnan(lo):
        return f"{mean:.3f} [no interval: one patient]"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _budget_table(strategies: list[str], budgets: list[int], lookup: dict, cell) -> list[str]:
    """A markdown table: one row per strategy, one column per budget, `cell(row)` in each (blank if absent)."""
    lines = ["| strategy | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for strategy in strategies:
        cells = [cell(lookup[(strategy, b)]) if (strategy, b) in lookup else "" for b in budgets]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def goal_statement(rows: list[dict]) -> str:
    """The goal with the strategy chosen after the fact (the best at the smallest budget), over all questions.

    Kept for runs that declare no `primary_strategy`; `declared_goal_statement` is the one to trust.
    """
    with_cov = [r for r in rows if r["evidence_coverage"] is not None]
    if not with_cov:
        return "No instruction carried gold evidence, so evidence coverage could not be measured."
    budgets = sorted({r["budget"] for r in with_cov})
    small, large = budgets[0], budgets[-1]
    full_large = next((r for r in with_cov if r["strategy"] == "full" and r["budget"] == large), None)
    candidates = [r for r in with_cov if r["budget"] == small and r["strategy"] not in ("full", "oracle")]
    if full_large is None or not candidates:
        return "The goal needs `full` at the largest budget and a retrieval strategy at the smallest; not both ran."
    best = max(candidates, key=lambda r: r["evidence_coverage"])
    diff = best.get("diff_vs_full32k_verdict")
    if diff is None:  # rows without paired differences: compare the means, flag overlapping intervals
        met = best["evidence_coverage"] >= full_large["evidence_coverage"]
        overlap = best["evidence_coverage_hi"] >= full_large["evidence_coverage_lo"] and \
            full_large["evidence_coverage_hi"] >= best["evidence_coverage_lo"]
        note = " (the 95% intervals overlap, so the difference is not clear-cut)" if overlap else ""
        return (
            f"Goal: the best retrieval strategy at {small} tokens covers at least as much gold evidence as `full` "
            f"at {large}. **{'MET' if met else 'NOT MET'}**: `{best['strategy']}` at {small} covers "
            f"{_fmt_clustered(best)}, `full` at {large} covers {_fmt_clustered(full_large)}{note}."
        )
    verdict = {"better": "MET", "worse": "NOT MET", "n/a": "UNDECIDED"}.get(diff, "TIE")
    return (
        f"Goal (strategy picked after the fact, all questions): the best retrieval strategy at {small} tokens "
        f"covers more gold evidence than `full` at {large}. **{verdict}**: `{best['strategy']}` at {small} covers "
        f"{_fmt_clustered(best)}, `full` at {large} covers {_fmt_clustered(full_large)}; paired difference "
        f"{_fmt_diff(best, 'diff_vs_full32k')}."
    )


def _fmt_clustered(row: dict | None) -> str:
    if row is None or row.get("evidence_coverage") is None:
        return "n/a"
    if row.get("coverage_patient_lo") is None:
        return _fmt(row["evidence_coverage"], row["evidence_coverage_lo"], row["evidence_coverage_hi"])
    return _fmt(row["evidence_coverage"], row["coverage_patient_lo"], row["coverage_patient_hi"])


def _fmt_diff(row: dict | None, prefix: str) -> str:
    if row is None or row.get(prefix) is None:
        return "n/a"
    verdict = row.get(f"{prefix}_verdict", "")
    if math.isnan(row[f"{prefix}_lo"]):
        return f"{row[prefix]:+.3f} [no interval: one patient]"
    return f"{row[prefix]:+.3f} [{row[f'{prefix}_lo']:+.3f}, {row[f'{prefix}_hi']:+.3f}] {verdict}".rstrip()


def split_patients(patient_ids: Sequence[str], seed: int, test_fraction: float) -> tuple[set[str], set[str]]:
    """A deterministic patient-level (tune, test) split: patients ordered by a seeded hash, the first
    round(test_fraction * n) are the test part. The same patients and seed always give the same split, and adding
    a patient never moves another one."""
    import hashlib

    if not 0.0 < test_fraction < 1.0:
        from medalign_rag.errors import MedalignError

        raise MedalignError(f"split.test_fraction must be between 0 and 1, got {test_fraction}")
    ordered = sorted(set(patient_ids), key=lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest())
    n_test = round(test_fraction * len(ordered))
    test = set(ordered[:n_test])
    return set(ordered) - test, test


def declared_goal_statement(
    results: Sequence[ItemResult], primary_strategy: str, test_patients: set[str] | None, *,
    resamples: int = 1000, seed: int = 0,
) -> str:
    """The goal for the strategy declared before the run, on the test part (all questions when no split)."""
    part = [i for i in results if test_patients is None or i.patient_id in test_patients]
    where = "on the test part" if test_patients is not None else "on all questions (no split declared)"
    groups = group_results([i for i in part if i.evidence_coverage is not None])
    budgets = sorted({b for _, b in groups})
    if not budgets:
        return f"Goal ({where}): no question with gold evidence, nothing to measure."
    small, large = budgets[0], budgets[-1]
    primary, full = groups.get((primary_strategy, small)), groups.get((BASELINE, large))
    if not primary or not full:
        return (f"Goal ({where}): needs `{primary_strategy}` at {small} and `full` at {large}; "
                "not both ran.")
    ours = _clustered(primary, lambda i: i.evidence_coverage, resamples, seed)
    theirs = _clustered(full, lambda i: i.evidence_coverage, resamples, seed)
    diff = _paired(primary, full, resamples, seed)
    verdict = {"better": "MET", "worse": "NOT MET", "n/a": "UNDECIDED (fewer than two test patients)"}.get(
        diff.verdict, "TIE")
    return (
        f"Goal (declared before the run, {where}: {ours.n_items} questions over {ours.n_clusters} patients): "
        f"`{primary_strategy}` at {small} tokens covers more gold evidence than `full` at {large}. **{verdict}**: "
        f"`{primary_strategy}` covers {_fmt(ours.mean, ours.lo, ours.hi)}, `full` covers "
        f"{_fmt(theirs.mean, theirs.lo, theirs.hi)}; paired difference "
        f"{_fmt_diff({'d': diff.mean, 'd_lo': diff.lo, 'd_hi': diff.hi}, 'd')} (95% intervals, patients "
        f"resampled; MET/NOT MET only when the difference's interval excludes 0, else TIE)."
    )


def _part_table(results: Sequence[ItemResult], strategies: list[str], budgets: list[int], resamples: int,
                seed: int) -> list[str]:
    groups = group_results([i for i in results if i.evidence_coverage is not None])
    lookup = {}
    for key, items in groups.items():
        estimate = _clustered(items, lambda i: i.evidence_coverage, resamples, seed)
        lookup[key] = {"evidence_coverage": estimate.mean, "coverage_patient_lo": estimate.lo,
                       "coverage_patient_hi": estimate.hi, "evidence_coverage_lo": estimate.lo,
                       "evidence_coverage_hi": estimate.hi}
    return _budget_table(strategies, budgets, lookup, _fmt_clustered)


def question_type_table(
    results: Sequence[ItemResult], strategies: list[str], primary_strategy: str | None, *,
    resamples: int = 1000, seed: int = 0,
) -> list[str]:
    """Coverage per question type (FHIR-AgentBench template family / synthetic category): `full` at the smallest
    and largest budget, every retrieval strategy at the smallest, and the paired difference of the primary
    strategy at the smallest budget against `full` at the largest."""
    with_gold = [i for i in results if i.evidence_coverage is not None and i.question_type]
    if not with_gold:
        return []
    budgets = sorted({i.budget for i in with_gold})
    small, large = budgets[0], budgets[-1]
    retrieval = [s for s in strategies if s != BASELINE]
    primary = primary_strategy if primary_strategy in retrieval else None
    header = ["type", "questions", f"full@{small}", f"full@{large}", *[f"{s}@{small}" for s in retrieval]]
    if primary:
        header.append(f"{primary}@{small} - full@{large} [95% CI]")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    by_type: dict[str, list[ItemResult]] = defaultdict(list)
    for item in with_gold:
        by_type[item.question_type].append(item)
    for qtype in sorted(by_type, key=lambda t: (-len({i.instruction_id for i in by_type[t]}), t)):
        groups = group_results(by_type[qtype])

        def cell(strategy: str, budget: int) -> str:
            items = groups.get((strategy, budget))
            return f"{_mean([i.evidence_coverage for i in items]):.3f}" if items else ""

        cells = [qtype, str(len({i.instruction_id for i in by_type[qtype]})), cell(BASELINE, small),
                 cell(BASELINE, large), *[cell(s, small) for s in retrieval]]
        if primary:
            ours, theirs = groups.get((primary, small)), groups.get((BASELINE, large))
            if ours and theirs:
                d = _paired(ours, theirs, resamples, seed)
                cells.append(_fmt_diff({"d": d.mean, "d_lo": d.lo, "d_hi": d.hi, "d_verdict": d.verdict}, "d"))
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(
    rows: list[dict],
    path: Path,
    *,
    title: str,
    notes: Sequence[str] = (),
    plots: Sequence[str] = (),
    results: Sequence[ItemResult] | None = None,
    primary_strategy: str | None = None,
    split: tuple[set[str], set[str]] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> None:
    """report.md. With `results`, also the declared-strategy goal on the test part of `split` (tune, test
    patients), the per-question-type table and the tune/test tables."""
    strategies = [s for s in strategy_names() if any(r["strategy"] == s for r in rows)]
    strategies += sorted({r["strategy"] for r in rows} - set(strategies))
    budgets = sorted({r["budget"] for r in rows})
    lookup = {(r["strategy"], r["budget"]): r for r in rows}
    lines = [f"# {title}", ""]
    if results is not None and primary_strategy is not None:
        lines += [declared_goal_statement(results, primary_strategy, split[1] if split else None,
                                          resamples=resamples, seed=seed), ""]
        lines += [goal_statement(rows), ""]
    else:
        lines += [goal_statement(rows), ""]
    lines += [f"- {n}" for n in notes]
    has_clustered = any(r.get("coverage_patient_lo") is not None for r in rows)
    lines += ["", "## Evidence coverage at budget (mean [95% CI, patients resampled])" if has_clustered else
              "## Evidence coverage at budget (mean [95% bootstrap CI])", "",
              "Share of each instruction's gold evidence that made it into the assembled context (mean over "
              "questions; a gold item that several events stand for, such as an Encounter, is covered by any of "
              "them). The interval resamples patients, since questions about one patient rise and fall together"
              + ("; the per-question interval of earlier reports is still in summary.csv." if has_clustered
                 else "."), ""]
    lines += _budget_table(strategies, budgets, lookup, _fmt_clustered)
    if has_clustered:
        lines += ["", f"## Paired differences in coverage against `{BASELINE}` (95% CI, patients resampled)", "",
                  f"Each cell: this strategy minus `{BASELINE}` on the same questions. \"better\"/\"worse\" only "
                  "where the interval excludes 0, otherwise \"tie\".", "",
                  f"Against `{BASELINE}` at the same budget:", ""]
        lines += _budget_table([s for s in strategies if s != BASELINE], budgets, lookup,
                               lambda r: _fmt_diff(r, "diff_vs_full"))
        lines += ["", f"Against `{BASELINE}` at {budgets[-1]}:", ""]
        lines += _budget_table(strategies, budgets, lookup, lambda r: _fmt_diff(r, "diff_vs_full32k"))
        lines += ["", "## Coverage variants", "",
                  "Per question: mean share (above), all gold covered, any gold covered; and the per-patient macro "
                  "average (every patient weighs the same). Cells: share / all / any / macro.", ""]
        lines += _budget_table(strategies, budgets, lookup, lambda r: (
            f"{r['evidence_coverage']:.3f} / {r['coverage_all']:.3f} / {r['coverage_any']:.3f} / "
            f"{r['coverage_macro']:.3f}" if r.get("coverage_all") is not None else ""))
    if any(r.get("coverage_legacy_encounter") is not None for r in rows):
        lines += ["", "## Encounter rule: coverage under the new and the legacy rule", "",
                  "New rule: a gold Encounter is covered by its admission or its discharge event (either brings "
                  "the encounter's dates). Legacy rule: only by its admission event, the oldest event of a stay "
                  "and the first that truncation cuts. Cells: new / legacy (mean share).", ""]
        lines += _budget_table(strategies, budgets, lookup, lambda r: (
            f"{r['evidence_coverage']:.3f} / {r['coverage_legacy_encounter']:.3f}"
            if r.get("coverage_legacy_encounter") is not None else ""))
    if any(r.get("answer_presence") is not None for r in rows):
        lines += ["", "## Answer presence (mean [95% CI, patients resampled], n questions)", "",
                  "LLM-free: for questions that look up a value, date or name the record holds, the share of the "
                  "gold answer's values found in the assembled context (numbers, dates and names normalized). An "
                  "upper bound on what a reader of the context could get right; not answer accuracy.", ""]
        lines += _budget_table(strategies, budgets, lookup, lambda r: (
            f"{_fmt(r['answer_presence'], r['answer_presence_lo'], r['answer_presence_hi'])} "
            f"(n={r['answer_presence_n']})" if r.get("answer_presence") is not None else ""))
    if results is not None:
        type_lines = question_type_table(results, strategies, primary_strategy, resamples=resamples, seed=seed)
        if type_lines:
            lines += ["", "## Coverage per question type (mean share; all questions)", "",
                      "FHIR-AgentBench template family or synthetic instruction category: where retrieval wins and "
                      "where it loses.", ""] + type_lines
        if split is not None:
            tune, test = split
            lines += ["", "## Tune/test protocol", "",
                      f"Patients are split before the run, deterministically (a seeded hash of the patient id): "
                      f"{len(tune)} tune patients, {len(test)} test patients. Rules and thresholds are to be chosen "
                      f"on the tune part only; the goal line above uses the strategy declared in the config "
                      f"(`primary_strategy: {primary_strategy}`) on the test part.", "",
                      "Coverage on the test part (mean [95% CI, patients resampled]):", ""]
            lines += _part_table([i for i in results if i.patient_id in test], strategies, budgets, resamples, seed)
            lines += ["", "Coverage on the tune part:", ""]
            lines += _part_table([i for i in results if i.patient_id in tune], strategies, budgets, resamples, seed)
    retrieval = [k for k in (rows[0] if rows else {}) if k.startswith(("recall", "mrr", "ndcg"))]
    if retrieval:
        lines += ["", "## Ranking quality over chunks holding gold evidence (budget-independent)", ""]
        lines.append("| strategy | " + " | ".join(retrieval) + " |")
        lines.append("|---|" + "---|" * len(retrieval))
        for s in strategies:
            r = lookup.get((s, budgets[0]))
            if r and any(r.get(k) is not None for k in retrieval):
                lines.append(f"| {s} | " + " | ".join(f"{r[k]:.3f}" if r.get(k) is not None else "" for k in retrieval) + " |")
    answer_metrics = sorted({k[: -len("_n")] for r in rows for k in r if k.endswith("_n") and k != "n"}
                            - {"answer_presence"})
    for metric in answer_metrics:
        lines += ["", f"## {metric} (mean [95% bootstrap CI], n answers)", ""]
        lines += _budget_table(strategies, budgets, lookup, lambda r, m=metric: (
            f"{_fmt(r[m], r[f'{m}_lo'], r[f'{m}_hi'])} (n={r[f'{m}_n']})" if r.get(m) is not None else ""))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_metric(rows: list[dict], metric: str, path: Path, ylabel: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = defaultdict(list)
    for r in rows:
        if r.get(metric) is not None:
            series[r["strategy"]].append((r["budget"], r[metric], r.get(f"{metric}_lo"), r.get(f"{metric}_hi")))
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    known = strategy_names()
    for strategy in [s for s in known if s in series] + sorted(set(series) - set(known)):
        points = sorted(series[strategy])
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        baseline = strategy in ("full", "oracle")
        # baselines drawn dashed and on top, so `recency` (often identical to `full`) cannot hide them
        line, = ax.plot(xs, ys, "--" if baseline else "-", marker="o", label=strategy,
                        linewidth=2.2 if baseline else 1.6, zorder=3 if baseline else 2)
        if all(p[2] is not None for p in points):
            ax.fill_between(xs, [p[2] for p in points], [p[3] for p in points], color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2)
    budgets = sorted({r["budget"] for r in rows})
    ax.set_xticks(budgets)
    ax.set_xticklabels([f"{b // 1024}k" if b % 1024 == 0 else str(b) for b in budgets])
    ax.set_xlabel("context budget (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="strategy", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True
