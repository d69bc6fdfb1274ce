"""The issue-14 table ("Index at cohort scale") from the JSON files the three benchmarks leave in their --out folders.

One run, every benchmark one after the other in one invocation (what RESULTS.md's table is filled from):

    python benchmarks/scale_table.py --run W [--gpu gpu-encoder-bench.json]

or the same steps by hand:

    python benchmarks/encoder_bench.py --out W/enc
    python benchmarks/index_bench.py --patients 4 --rounds 1 --variants ours-before,ray --out W/ib
    python benchmarks/retrieval_bench.py --quick --patients 12 --out W/rb
    python benchmarks/scale_table.py --encoder W/enc --index W/ib --retrieval W/rb

Every figure is copied from those files (nothing is measured here); each run's load average is printed with it,
because on a shared machine a number means little without the load it was measured under.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import replace_section  # noqa: E402


def load(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def load_note(info: dict) -> str:
    return f"load {info['uptime_before'].split(' (')[0]} before, {info['uptime_after'].split(' (')[0]} after"


HERE = Path(__file__).resolve().parent


def run_all(work: Path, index_patients: int, results: Path) -> dict:
    """The three benchmarks, one after the other, each in its own process (as a user runs them)."""
    steps = [
        ("encoder", [sys.executable, str(HERE / "encoder_bench.py"), "--out", str(work / "enc"), "--results", str(results)]),
        ("index", [sys.executable, str(HERE / "index_bench.py"), "--patients", str(index_patients), "--rounds", "1",
                   "--variants", "ours-before,ray", "--skip-cli", "--out", str(work / "ib"), "--results", str(results)]),
        ("retrieval", [sys.executable, str(HERE / "retrieval_bench.py"), "--out", str(work / "rb"), "--results", str(results)]),
    ]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    for name, command in steps:
        print(f"== {name}: {' '.join(command)} (load {os.getloadavg()[0]:.2f})", flush=True)
        with open(work / f"{name}.log", "w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {"started": started, "ended": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="run all three benchmarks into this folder first")
    parser.add_argument("--index-patients", type=int, default=12)
    parser.add_argument("--gpu", type=Path, default=None, help="gpu-encoder-bench.json from a GPU worker")
    parser.add_argument("--encoder", type=Path, default=None)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--retrieval", type=Path, default=None)
    parser.add_argument("--reindex", type=Path, default=None,
                        help="a later re-index measurement (reindex.json: empty cache, previous index in place)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    one_run = None
    if args.run:
        args.run.mkdir(parents=True, exist_ok=True)
        one_run = run_all(args.run, args.index_patients, args.results)
        args.encoder, args.index, args.retrieval = args.run / "enc", args.run / "ib", args.run / "rb"
    if not (args.encoder and args.index and args.retrieval):
        parser.error("give --run, or all of --encoder, --index and --retrieval")

    enc = load(args.encoder, "encoder-bench.json")
    ib = load(args.index, "index-bench.json")
    rb = load(args.retrieval, "retrieval-bench.json")

    rows_by_name = {row["variant"]: row for row in enc["rows"]}
    today = rows_by_name["sentence-transformers fp32, per patient (today)"]
    valid = [row for row in enc["rows"] if row["valid"] and "stream" in row["variant"]]
    best = max(valid, key=lambda row: row["tokens_per_s"])

    ours, llama = ib["ours"], ib["llama"]
    before = ours["variants"].get("ours-before")
    ray = ours["variants"].get("ray")
    rate = ours["chunks"] / ours["seconds"]
    llama_rate = llama["chunks"] / llama["seconds"]
    before_rate = before["chunks"] / before["seconds"] if before else None
    ray_rate = ray["chunks"] / ray["seconds"] if ray else None

    summary = rb["summary"]

    def median(key: str) -> float:
        return summary[key]["median_ms"]

    hybrid = median("ours | hybrid | 32768")
    hybrid_fp32 = median("ours, torch-fp32 encoder | hybrid | 32768")
    fusion = median("llama-index | QueryFusionRetriever (vector + BM25, RRF) + same packing | 32768")
    query = median("query embedding | ours embed_query | None")
    query_fp32 = median("query embedding | ours embed_query, torch-fp32 encoder | None")
    reindex = rb["reindex"]
    reindex_note = "unchanged encounters keep their chunks and vectors from the previous index"
    if args.reindex:
        later = json.loads(args.reindex.read_text())
        reindex = later["reindex"]
        reindex_note = (f"unchanged encounters reuse the previous index's chunks and vectors, embedding cache empty; "
                        f"measured separately, load {later['load_before'][0]:.1f}")

    if one_run:
        command = (f"Command: `python benchmarks/scale_table.py --run {args.run}` ({one_run['started']} to "
                   f"{one_run['ended']} UTC), one run: the three benchmarks one after the other on this machine "
                   f"({ib['info']['machine']}):")
    else:
        command = (f"Command: `python benchmarks/scale_table.py --encoder {args.encoder} --index {args.index} "
                   f"--retrieval {args.retrieval}` over three runs on this machine ({ib['info']['machine']}), one "
                   "after the other:")
    gpu = json.loads(args.gpu.read_text()) if args.gpu else None
    gpu_row = "| encoder tokens/s on one GPU worker | - | not measured | reported |"
    if gpu:
        fp32 = [row for row in gpu["rows"] if row["variant"].startswith("medalign-rag TorchEncoder fp32")]
        top = max(fp32, key=lambda row: row["median_tokens_per_s"])
        gpu_row = (f"| encoder tokens/s on one GPU worker ({gpu['gpu']}, {gpu['started_utc']} UTC; "
                   f"`benchmarks/gpu_encoder_bench.py`, section 'Encoder on one GPU worker') | - | "
                   f"**{top['median_tokens_per_s']:,.0f}** (TorchEncoder fp32 on cuda, median of {gpu['rounds']}; "
                   f"cosine to CPU fp32 min {top['cosine_min']:.5f}) | reported |")
    lines = [
        "## Index at cohort scale (issue 14)",
        "",
        command,
        f"encoder bench {enc['info']['started']} ({load_note(enc['info'])}); index bench {ib['info']['started']} "
        f"({load_note(ib['info'])}); retrieval bench {rb['info']['started']} ({load_note(rb['info'])}). "
        "The load averages (2 cores, shared with other jobs) make every absolute figure here pessimistic; each "
        "comparison is within one run, variants interleaved or alternated.",
        "",
        "| measure | before (same run) | now | goal |",
        "|---|---|---|---|",
        f"| index build, chunks/s vs plain llama-index ({ours['patients']} synthetic patients, {ours['chunks']} "
        f"chunks; 1 round) | {before_rate / llama_rate:.2f}x ({before_rate:.2f} vs {llama_rate:.2f} chunks/s) | "
        f"**{rate / llama_rate:.2f}x** ({rate:.2f} chunks/s, encoder {ours.get('encoder')}) | >= 4x |"
        if before_rate else "| index build | - | - | >= 4x |",
        f"| encoder tokens/s on 2 cores ({enc['sample_windows']} windows of {enc['sample_patients']} patients, "
        f"{enc['rounds'] if 'rounds' in enc else 2} rounds) | {today['tokens_per_s']:,.0f} (sentence-transformers fp32, "
        f"per patient) | **{best['tokens_per_s']:,.0f}** ({best['variant']}; {best['speedup']:.2f}x; cosine to fp32 "
        f"min {best['cos_min']:.5f}) | >= 9,000 |",
        f"| one new encounter on a {rb['record_tokens']:,}-token record, re-index | full build "
        f"{rb['ours_build_seconds']:.1f} s | **{reindex['seconds']:.2f} s** ({reindex['encoded_windows']} of "
        f"{reindex['windows']} windows encoded, {reindex['events_added']} events added; {reindex_note}) | < 1 s |",
        f"| hybrid + assembly at 32k, median | {hybrid_fp32:.1f} ms (torch-fp32 query encoder) | **{hybrid:.1f} ms** "
        f"({rb.get('encoder')}); QueryFusionRetriever + same packing {fusion:.1f} ms = {fusion / hybrid:.2f}x | "
        f"< 20 ms, >= 3x |",
        f"| query embedding alone, median | {query_fp32:.1f} ms | **{query:.1f} ms** | a few ms |",
        f"| Ray engine on this machine ({ours['patients']} patients; default layout, 1 actor x 2 CPUs; Ray start-up outside the "
        f"clock, model loads inside), throughput vs local engine | - | **{ray_rate / rate:.2f}x** ({ray_rate:.2f} vs "
        f"{rate:.2f} chunks/s) | >= 0.8x |" if ray_rate else "| Ray engine | - | not run | >= 0.8x |",
        gpu_row,
        "| 500 synthetic patients (or the OMOP / Synthea cohorts): wall time and peak RSS | - | not part of this run:"
        " all 47 Synthea FHIR patients 444.4 s of build, 7 min 32 s wall, peak RSS 2,320 MiB, 11,369 chunks "
        "(section 'Record sources') | reported |",
        "",
        f"Where hybrid's 32k time goes (same run): ranking alone (hybrid `rank`, query embedding included) "
        f"{median('ours retrieval only | hybrid | None'):.1f} ms; the rest is packing "
        f"(`full`, which ranks nothing, takes {median('ours | full | 32768'):.1f} ms at 32k).",
        "",
        f"Padding (the whole {enc['patients']}-patient cohort, batch 64): per-patient encode calls "
        f"{100 * (enc['per_patient_padded'] - enc['real_tokens']) / enc['per_patient_padded']:.1f}% of encoded tokens,"
        f" one cross-patient length-sorted stream "
        f"{100 * (enc['stream_padded'] - enc['real_tokens']) / enc['stream_padded']:.1f}%.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        replace_section(args.results, "Index at cohort scale (issue 14)", section)


if __name__ == "__main__":
    main()
