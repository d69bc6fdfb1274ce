"""Summaries of an ablation: summary.csv (one row per strategy and budget), report.md and PNG plots."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from medalign_rag.retrieval.registry import strategy_names
from medalign_rag.atomic import atomic_path, atomic_write_text
from medalign_rag.evaluation.metrics import bootstrap_interval
from medalign_rag.evaluation.runner import ItemResult



def _mean_ci(values: Sequence[float], resamples: int, seed: int) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    mean, lo, hi = bootstrap_interval(list(values), n_resamples=resamples, seed=seed)
    return mean, lo, hi


def summarize(results: list[ItemResult], resamples: int = 1000, seed: int = 0) -> list[dict]:
    groups: dict[tuple[str, int], list[ItemResult]] = defaultdict(list)
    for item in results:
        groups[(item.strategy, item.budget)].append(item)
    answer_metric_names = sorted({name for item in results for name in item.answer_metrics})
    retrieval_names = sorted({name for item in results for name in item.retrieval})
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
    if mean is None:
        return "n/a"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _budget_table(strategies: list[str], budgets: list[int], lookup: dict, cell) -> list[str]:
    """A markdown table: one row per strategy, one column per budget, `cell(row)` in each (blank if absent)."""
    lines = ["| strategy | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for strategy in strategies:
        cells = [cell(lookup[(strategy, b)]) if (strategy, b) in lookup else "" for b in budgets]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return lines


def goal_statement(rows: list[dict]) -> str:
    """The project's goal, stated honestly: does the best retrieval at the smallest budget cover as much gold
    evidence as `full` at the largest?"""
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
    met = best["evidence_coverage"] >= full_large["evidence_coverage"]
    verdict = "MET" if met else "NOT MET"
    overlap = best["evidence_coverage_hi"] >= full_large["evidence_coverage_lo"] and \
        full_large["evidence_coverage_hi"] >= best["evidence_coverage_lo"]
    note = " (the 95% intervals overlap, so the difference is not clear-cut)" if overlap else ""
    return (
        f"Goal: the best retrieval strategy at {small} tokens covers at least as much gold evidence as `full` at "
        f"{large}. **{verdict}**: `{best['strategy']}` at {small} covers "
        f"{_fmt(best['evidence_coverage'], best['evidence_coverage_lo'], best['evidence_coverage_hi'])}, `full` at "
        f"{large} covers {_fmt(full_large['evidence_coverage'], full_large['evidence_coverage_lo'], full_large['evidence_coverage_hi'])}"
        f"{note}."
    )


def write_report(rows: list[dict], path: Path, *, title: str, notes: Sequence[str] = (), plots: Sequence[str] = ()) -> None:
    strategies = [s for s in strategy_names() if any(r["strategy"] == s for r in rows)]
    strategies += sorted({r["strategy"] for r in rows} - set(strategies))
    budgets = sorted({r["budget"] for r in rows})
    lookup = {(r["strategy"], r["budget"]): r for r in rows}
    lines = [f"# {title}", "", goal_statement(rows), ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "## Evidence coverage at budget (mean [95% bootstrap CI])", "",
              "Share of each instruction's gold evidence events that made it into the assembled context.", ""]
    lines += _budget_table(strategies, budgets, lookup, lambda r: _fmt(
        r["evidence_coverage"], r["evidence_coverage_lo"], r["evidence_coverage_hi"]))
    retrieval = [k for k in (rows[0] if rows else {}) if k.startswith(("recall", "mrr", "ndcg"))]
    if retrieval:
        lines += ["", "## Ranking quality over chunks holding gold evidence (budget-independent)", ""]
        lines.append("| strategy | " + " | ".join(retrieval) + " |")
        lines.append("|---|" + "---|" * len(retrieval))
        for s in strategies:
            r = lookup.get((s, budgets[0]))
            if r and any(r.get(k) is not None for k in retrieval):
                lines.append(f"| {s} | " + " | ".join(f"{r[k]:.3f}" if r.get(k) is not None else "" for k in retrieval) + " |")
    answer_metrics = sorted({k[: -len("_n")] for r in rows for k in r if k.endswith("_n") and k != "n"})
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
