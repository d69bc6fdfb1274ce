"""Retrieval + context assembly latency per strategy, and the same job through llama-index's QueryFusionRetriever.

    python benchmarks/retrieval_bench.py                  # ~50 instructions, budgets 2048 and 32768
    python benchmarks/retrieval_bench.py --quick          # 20 instructions

Setup (not timed): a synthetic cohort (50 patients, seed 7); the first patient in id order whose record is at
least 40k cl100k tokens; its index built with `IndexBuilder`; the embedding model loaded; every path warmed up on
3 instructions that are not timed.

Timed per instruction, with the embedder's query cache emptied before every call so each one pays for its own
query embedding (in normal use an instruction is embedded once):

* ours: `Pipeline.context(patient, question, strategy=..., budget=...)`, which is what `ask` and the evaluation run:
  rank with the strategy's retriever (`make_retriever(...).rank`), count the prompt overhead, pack the ranked
  chunks into the budget (`assemble_context`), render the context XML and count it exactly.
* llama-index: `QueryFusionRetriever([VectorIndexRetriever, BM25Retriever], mode="reciprocal_rerank",
  num_queries=1, use_async=False)` (the same RRF with k=60 as our hybrid; MockLLM passed, never called) over a
  `VectorStoreIndex` (FaissVectorStore, same model files) and the llama-index BM25 retriever on the same chunks,
  similarity_top_k = every chunk so a 32k budget can be filled, then the SAME packing step as ours
  (`assemble_context` with the fused order and the same prompt overhead).
* retrieval alone (no packing) for both: our hybrid/dense/bm25 `rank` vs llama-index fusion/vector/BM25 `retrieve`.

The instructions: the chosen patient's own (with their time anchors and gold evidence, used by `oracle`), then
distinct questions of the other patients (no time anchor), round-robin over the generator's question templates.
Calls are interleaved (instruction by instruction, every configuration in turn) so machine load hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import EMBED_DIM, machine_info, replace_section, run_header  # noqa: E402

from medalign_rag.retrieval.registry import strategy_names  # noqa: E402

STRATEGIES = strategy_names()  # every registered strategy, in the order users see them
BUDGETS = (2048, 32768)
WARMUP = 3
FUSED = "QueryFusionRetriever (vector + BM25, RRF) + same packing"


def pick_instructions(instructions: list, patient_id: str, count: int) -> list:
    """The patient's own instructions first, then other patients' distinct questions, template by template."""
    own = [i for i in instructions if i.patient_id == patient_id]
    seen = {i.question for i in own}
    by_template: dict[str, list] = defaultdict(list)
    for instruction in instructions:
        if instruction.patient_id != patient_id and instruction.question not in seen:
            seen.add(instruction.question)
            by_template[str(instruction.metadata.get("template", instruction.category))].append(instruction)
    chosen = list(own)
    queues = [list(reversed(q)) for _, q in sorted(by_template.items())]
    while len(chosen) < count and any(queues):
        for queue in queues:
            if queue and len(chosen) < count:
                other = queue.pop()
                # another patient's question about this record: no anchor, no gold
                chosen.append(other.model_copy(update={"patient_id": patient_id, "time_anchor": None,
                                                       "evidence_event_ids": []}))
    return chosen[:count]


def grow_and_reindex(pipeline, data, patient_id: str, work: Path) -> dict:
    """Append one encounter (a copy of the last one, 30 days later, new ids) and time the patient's rebuild."""
    from datetime import timedelta

    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.records.serialize import write_release_xml

    record = data.load_record(patient_id)
    last = record.encounters[-1]
    shift = timedelta(days=30)
    new_encounter = last.model_copy(update={
        "encounter_id": f"{last.encounter_id}-next",
        "start": last.start + shift,
        "end": last.end + shift if last.end else None,
        "events": [event.model_copy(update={"event_id": f"{event.event_id}-next",
                                            "timestamp": event.timestamp + shift}) for event in last.events],
    })
    grown = record.model_copy(update={"encounters": [*record.encounters, new_encounter]})
    folder = work / "grown"
    write_release_xml(grown, folder / "medalign_ehr_xml" / f"{patient_id}.xml")
    grown_data = open_data_folder(folder)
    builder = pipeline.builder
    misses = builder.embedder.cache.misses if builder.embedder.cache is not None else 0
    started = time.perf_counter()
    result = builder.build_patient(grown_data, patient_id)
    seconds = time.perf_counter() - started
    encoded = (builder.embedder.cache.misses - misses) if builder.embedder.cache is not None else result.windows
    return {"seconds": seconds, "status": result.status, "windows": result.windows, "encoded_windows": encoded,
            "events_added": len(new_encounter.events)}


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=50, help="cohort size to draw the record and questions from")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--instructions", type=int, default=50)
    parser.add_argument("--min-tokens", type=int, default=40_000)
    parser.add_argument("--quick", action="store_true", help="20 instructions instead of --instructions")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, print a cProfile of ours hybrid at 32k (where the time goes)")
    args = parser.parse_args()
    n_instructions = 20 if args.quick else args.instructions

    work = args.out or Path(tempfile.mkdtemp(prefix="retrieval-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info(" ".join(["python", "benchmarks/retrieval_bench.py", *sys.argv[1:]]))

    import faiss
    import torch
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.retrievers import QueryFusionRetriever, VectorIndexRetriever
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.retrievers.bm25 import BM25Retriever as LlamaBM25Retriever
    from llama_index.vector_stores.faiss import FaissVectorStore

    from medalign_rag.context import assemble_context
    from medalign_rag.datasets.synthetic import generate_cohort
    from medalign_rag.index.builder import IndexSettings
    from medalign_rag.index.embedding import packaged_model_path
    from medalign_rag.pipeline import AnswerRequest, Pipeline
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.records.serialize import render_record
    from medalign_rag.retrieval import make_retriever

    cohort = work / f"cohort-{args.patients}-{args.seed}"
    if not any((cohort / name).is_dir() for name in ("medalign_ehr_xml", "ehrs")):  # either layout
        generate_cohort(cohort, args.patients, args.seed)
    data = open_data_folder(cohort)
    pipeline = Pipeline(data, IndexSettings(index_dir=work / "indexes"))  # the default (fastest validated) encoder
    # the reference encoder, for the query-path comparison: its own index, so vectors are never mixed
    reference = Pipeline(data, IndexSettings(index_dir=work / "indexes-fp32", encoder="torch-fp32"))
    counter = pipeline.counter

    patient_id, record_tokens = None, 0
    for candidate in data.patient_ids():
        tokens = counter.count(render_record(data.load_record(candidate)))
        if tokens >= args.min_tokens:
            patient_id, record_tokens = candidate, tokens
            break
    if patient_id is None:
        raise SystemExit(f"no record of {args.min_tokens}+ tokens in {cohort}")
    instructions = pick_instructions(data.instructions(), patient_id, n_instructions + WARMUP)
    warmup, timed = instructions[:WARMUP], instructions[WARMUP:]
    print(f"[retrieval-bench] {patient_id}: {record_tokens} tokens; {len(timed)} timed instructions", flush=True)

    started = time.perf_counter()
    pipeline.builder.build_patient(data, patient_id, force=True)
    ours_build_seconds = time.perf_counter() - started
    index = pipeline.patient_index(patient_id)
    embedder = pipeline.builder.embedder
    reference.builder.build_patient(data, patient_id, force=True)
    reference.patient_index(patient_id)
    encoder_label = pipeline.builder.settings.encoder
    chunks = index.chunks

    # llama-index over the same chunks and the same model files
    embed_model = HuggingFaceEmbedding(model_name=str(packaged_model_path()), device="cpu")
    nodes = [TextNode(id_=chunk.chunk_id, text=chunk.text) for chunk in chunks]
    started = time.perf_counter()
    storage_context = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss.IndexFlatIP(EMBED_DIM)))
    vector_index = VectorStoreIndex(nodes, storage_context=storage_context, embed_model=embed_model)
    llama_build_seconds = time.perf_counter() - started
    every = len(nodes)
    llama_vector = VectorIndexRetriever(vector_index, similarity_top_k=every)
    llama_bm25 = LlamaBM25Retriever.from_defaults(nodes=nodes, similarity_top_k=every)
    llama_fusion = QueryFusionRetriever([llama_vector, llama_bm25], llm=MockLLM(), mode="reciprocal_rerank",
                                        num_queries=1, use_async=False, similarity_top_k=every)
    position_of = {chunk.chunk_id: position for position, chunk in enumerate(chunks)}

    def ours_context(strategy: str, budget: int, which=pipeline) -> Callable:
        def run(instruction) -> None:
            which.prepare(AnswerRequest(patient_id=patient_id, question=instruction.question, strategy=strategy,
                                        budget=budget, time_anchor=instruction.time_anchor),
                          gold_event_ids=instruction.evidence_event_ids)
        return run

    def llama_context(budget: int) -> Callable:
        def run(instruction) -> None:
            fused = llama_fusion.retrieve(instruction.question)
            ranking = [position_of[n.node.node_id] for n in fused]
            assemble_context(index, strategy="llama-index-fusion", budget=budget, counter=counter, ranking=ranking,
                             overhead_tokens=pipeline.overhead_tokens(instruction.question, instruction.time_anchor),
                             reserve_tokens=pipeline.reserve_tokens, time_anchor=instruction.time_anchor)
        return run

    sys.path.insert(0, str(ROOT / "tests"))
    import reference_packing  # the chunk packing before issue 14's query-path work, frozen for the tests

    def reference_packing_context(budget: int) -> Callable:
        """Our hybrid ranking (query embedded) + the packing as it was: every attempt rendered and counted whole."""
        def run(instruction) -> None:
            ranking = [p for p, _ in make_retriever("hybrid", index, embedder=embedder,
                                                    time_anchor=instruction.time_anchor).rank(instruction.question)]
            reference_packing.assemble_context(
                index, strategy="hybrid", budget=budget, counter=counter, ranking=ranking,
                overhead_tokens=pipeline.overhead_tokens(instruction.question, instruction.time_anchor),
                reserve_tokens=pipeline.reserve_tokens, time_anchor=instruction.time_anchor)
        return run

    def ours_rank(strategy: str) -> Callable:
        def run(instruction) -> None:
            make_retriever(strategy, index, embedder=embedder, time_anchor=instruction.time_anchor).rank(
                instruction.question)
        return run

    def llama_retrieve(retriever) -> Callable:
        def run(instruction) -> None:
            retriever.retrieve(instruction.question)
        return run

    def single_thread(run: Callable) -> Callable:
        # A one-query encode gains nothing from intra-op threads, and on a busy machine their spin-waits stall it
        def wrapped(instruction) -> None:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                run(instruction)
            finally:
                torch.set_num_threads(threads)
        return wrapped

    configurations: dict[tuple[str, str, int | None], Callable] = {}
    for budget in BUDGETS:
        for strategy in STRATEGIES:
            configurations[("ours", strategy, budget)] = ours_context(strategy, budget)
        configurations[("llama-index", FUSED, budget)] = llama_context(budget)
        configurations[("ours, torch-fp32 encoder", "hybrid", budget)] = ours_context("hybrid", budget, reference)
    for strategy in ("hybrid", "dense", "bm25"):
        configurations[("ours retrieval only", strategy, None)] = ours_rank(strategy)
    configurations[("llama-index retrieval only", "QueryFusionRetriever", None)] = llama_retrieve(llama_fusion)
    configurations[("llama-index retrieval only", "VectorIndexRetriever", None)] = llama_retrieve(llama_vector)
    configurations[("llama-index retrieval only", "BM25Retriever", None)] = llama_retrieve(llama_bm25)
    configurations[("query embedding", "ours embed_query", None)] = lambda i: embedder.embed_query(i.question)
    configurations[("query embedding", "ours embed_query, torch-fp32 encoder", None)] = \
        lambda i: reference.builder.embedder.embed_query(i.question)
    configurations[("query embedding", "llama-index get_query_embedding", None)] = \
        lambda i: embed_model.get_query_embedding(i.question)
    configurations[("query embedding", "ours embed_query, 1 torch thread", None)] = \
        single_thread(lambda i: embedder.embed_query(i.question))
    for budget in BUDGETS:
        configurations[("ours, 1 torch thread", "hybrid", budget)] = single_thread(ours_context("hybrid", budget))
        configurations[("llama-index, 1 torch thread", FUSED, budget)] = single_thread(llama_context(budget))
        configurations[("ours, packing before issue 14", "hybrid", budget)] = reference_packing_context(budget)

    # Count how often packing renders the context XML (each render is followed by an exact token count).
    import medalign_rag.context as context_module

    renders = {"n": 0}

    def counting(render: Callable) -> Callable:
        def counted(*args, **kwargs):
            renders["n"] += 1
            return render(*args, **kwargs)
        return counted

    for name in ("_render_text", "_render_places"):  # chunk packing renders by places, event packing by items
        setattr(context_module, name, counting(getattr(context_module, name)))
    reference_packing._render_text = counting(reference_packing._render_text)
    render_counts: dict[tuple, list[int]] = defaultdict(list)

    def call(run: Callable, instruction, key: tuple | None = None) -> float:
        for which in (pipeline, reference):  # each call ranks and embeds its query, as a single `ask` does
            which.builder.embedder._query_cache.clear()
            which._rankings.clear()
        renders["n"] = 0
        started = time.perf_counter()
        run(instruction)
        elapsed = time.perf_counter() - started
        if key is not None:
            render_counts[key].append(renders["n"])
        return elapsed

    for instruction in warmup:
        for run in configurations.values():
            call(run, instruction)
    print("[retrieval-bench] warmed up; timing", flush=True)
    latencies: dict[tuple, list[float]] = defaultdict(list)
    for number, instruction in enumerate(timed, 1):
        for key, run in configurations.items():
            latencies[key].append(call(run, instruction, key) * 1000)
        if number % 10 == 0:
            print(f"[retrieval-bench] {number}/{len(timed)}", flush=True)

    reindex = grow_and_reindex(pipeline, data, patient_id, work)
    print(f"[retrieval-bench] re-index after one new encounter: {reindex}", flush=True)
    info = machine_info(info["command"], before=info)
    summary = {
        f"{who} | {what} | {budget}": {"median_ms": statistics.median(v), "p95_ms": percentile(v, 95),
                                       "mean_ms": statistics.fmean(v), "n": len(v)}
        for (who, what, budget), v in latencies.items()
    }
    (work / "retrieval-bench.json").write_text(json.dumps({"summary": summary, "info": info,
                                                          "patient": patient_id,
                                                          "record_tokens": record_tokens, "reindex": reindex,
                                                          "encoder": encoder_label,
                                                          "ours_build_seconds": ours_build_seconds}, indent=2))

    def stat(key: tuple) -> tuple[float, float]:
        values = latencies[key]
        return statistics.median(values), percentile(values, 95)

    n_windows = index.vectors.ntotal
    lines = [
        "## Retrieval + context assembly",
        "",
        *run_header(info),
        "",
        f"Record: {patient_id} of the {args.patients}-patient synthetic cohort (seed {args.seed}), "
        f"{record_tokens:,} cl100k tokens, {len(chunks)} chunks, {n_windows} embedding windows. "
        f"{len(timed)} timed instructions ({sum(1 for i in timed if i.time_anchor)} of them the patient's own, with "
        f"time anchor and gold evidence), {WARMUP} warm-up instructions not timed. Latency in milliseconds per "
        f"instruction, query embedding included (cache emptied before each call). Setup, not timed: our index "
        f"build for this patient {ours_build_seconds:.1f} s; llama-index VectorStoreIndex {llama_build_seconds:.1f} s.",
        "",
        f"Ours: `Pipeline.prepare(AnswerRequest)` (rank + prompt overhead + pack + render + exact count + prompt), "
        f"encoder {encoder_label} (the default: fastest validated encoder installed); its ranking cache is emptied "
        f"before every call.",
        "",
        "| strategy | 2048: median | p95 | renders | 32768: median | p95 | renders |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def renders_of(key: tuple) -> str:
        return f"{statistics.fmean(render_counts[key]):.1f}"

    rows = [(strategy, ("ours", strategy)) for strategy in STRATEGIES]
    rows += [("hybrid, torch-fp32 encoder (index and query)", ("ours, torch-fp32 encoder", "hybrid")),
             ("hybrid, 1 torch thread", ("ours, 1 torch thread", "hybrid")),
             ("hybrid, chunk packing as before issue 14's query-path work (tests/reference_packing.py)",
              ("ours, packing before issue 14", "hybrid")),
             (f"llama-index {FUSED}", ("llama-index", FUSED)),
             (f"llama-index {FUSED}, 1 torch thread", ("llama-index, 1 torch thread", FUSED))]
    for label, (who, what) in rows:
        small, large = stat((who, what, 2048)), stat((who, what, 32768))
        lines.append(f"| {label} | {small[0]:.1f} | {small[1]:.1f} | {renders_of((who, what, 2048))} | "
                     f"{large[0]:.1f} | {large[1]:.1f} | {renders_of((who, what, 32768))} |")
    hybrid32, hybrid2 = stat(("ours", "hybrid", 32768))[0], stat(("ours", "hybrid", 2048))[0]
    llama32, llama2 = stat(("llama-index", FUSED, 32768))[0], stat(("llama-index", FUSED, 2048))[0]
    one32 = stat(("ours, 1 torch thread", "hybrid", 32768))[0]
    lines += [
        "",
        "`renders` = mean renders of the context XML per call. Packing (chunk and event) renders once, the context "
        "it returns: its packing attempts are counted exactly by summing per-line cl100k counts (exact because "
        "every line splits cleanly at its newline, tests/test_packing_equivalence.py).",
        "",
        f"**Hybrid at 32k: median {hybrid32:.1f} ms** (target < 20 ms: {'met' if hybrid32 < 20 else 'NOT met'}; "
        f"with 1 torch thread {one32:.1f} ms). "
        f"**llama-index fusion + same packing / ours hybrid, median: {llama32 / hybrid32:.2f}x at 32k**, "
        f"{llama2 / hybrid2:.2f}x at 2k (target ≥ 3x faster for ours).",
        "",
        "Retrieval alone (ranking every chunk, no packing):",
        "",
        "| ours | median | p95 | llama-index | median | p95 | llama-index / ours (median) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for ours_name, llama_name in (("hybrid", "QueryFusionRetriever"), ("dense", "VectorIndexRetriever"),
                                  ("bm25", "BM25Retriever")):
        o = stat(("ours retrieval only", ours_name, None))
        l = stat(("llama-index retrieval only", llama_name, None))
        lines.append(f"| {ours_name} `rank` | {o[0]:.1f} | {o[1]:.1f} | {llama_name} `retrieve` | {l[0]:.1f} | "
                     f"{l[1]:.1f} | {l[0] / o[0]:.2f}x |")
    lines += ["", "Query embedding alone (one instruction, same model):", "",
              "| call | median | p95 |", "|---|---:|---:|"]
    for name in ("ours embed_query", "ours embed_query, torch-fp32 encoder", "ours embed_query, 1 torch thread",
                 "llama-index get_query_embedding"):
        q = stat(("query embedding", name, None))
        label = f"{name} ({encoder_label})" if name == "ours embed_query" else name
        lines.append(f"| {label} | {q[0]:.1f} | {q[1]:.1f} |")
    lines += ["", f"**Re-index after one new encounter** (the record plus a copy of its last encounter a month later, "
              f"same index folder: unchanged encounters keep their chunks and vectors from the previous index): "
              f"{reindex['seconds']:.2f} s, "
              f"{reindex['encoded_windows']} of {reindex['windows']} windows encoded "
              f"(first build of this record: {ours_build_seconds:.1f} s)."]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        run = configurations[("ours", "hybrid", 32768)]
        profiler.enable()
        for instruction in timed:
            embedder._query_cache.clear()
            run(instruction)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    if not args.no_write:
        replace_section(args.results, "Retrieval + context assembly", section)
        print(f"[retrieval-bench] wrote the 'Retrieval + context assembly' section of {args.results}")


if __name__ == "__main__":
    main()
