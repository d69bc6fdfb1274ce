"""Index build speed: medalign-rag's IndexBuilder vs a plain llama-index VectorStoreIndex per patient.

    python benchmarks/index_bench.py                    # 50-patient synthetic cohort (seed 7)
    python benchmarks/index_bench.py --quick            # 12 patients: a few minutes on a 2-core machine
    python benchmarks/index_bench.py --prototype        # also time candidate speed-ups on a sample of windows

Both pipelines start from the same release-XML records and the same chunks (medalign_rag.chunking.chunk_record)
and write one index per patient to disk. Each runs in its own subprocess, one after the other in this invocation,
so that its peak RSS (ru_maxrss) is its own and a shared machine's load hits both alike. The embedding model is
loaded (and warmed up on one sentence) before the clock starts in both.

* ours: `IndexBuilder(IndexSettings(index_dir=...)).build(open_data_folder(cohort))`: reads each record, chunks
  it, cuts each chunk into <=256-token windows (small-to-big), embeds every window, writes FAISS + chunks +
  manifest atomically. A second `build` over the unchanged cohort is timed too (it should skip every patient).
* llama-index: for each patient, read + chunk the record the same way, then `VectorStoreIndex(nodes,
  storage_context=StorageContext.from_defaults(vector_store=FaissVectorStore(IndexFlatIP(384))),
  embed_model=HuggingFaceEmbedding(<same model files>, device="cpu"))` with its defaults (embed batch size 10,
  text truncated at the model's 256 tokens), and `storage_context.persist(<dir>/<patient>)`.

Chunks per second = chunks indexed / seconds from records to persisted indexes (chunking included in both; the
llama-index figure without chunking is printed too). Encoder tokens per second shows how much text each
pipeline actually embeds: llama-index silently truncates every chunk to its first 256 encoder tokens, ours
embeds all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EMBED_DIM = 384
QUICK_PATIENTS = 12


# ------------------------------------------------------------------------------------------------ helpers


def _versions() -> str:
    from importlib import metadata

    names = ["medalign-rag", "torch", "sentence-transformers", "transformers", "faiss-cpu", "llama-index-core",
             "llama-index-vector-stores-faiss", "llama-index-embeddings-huggingface", "llama-index-retrievers-bm25",
             "bm25s", "tiktoken", "onnxruntime", "openvino", "ray"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return f"Python {platform.python_version()}, " + ", ".join(found)


def _uptime() -> str:
    load = os.getloadavg()
    return f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)"


def run_header(info: dict) -> list[str]:
    """The lines every RESULTS.md section opens with: command, run times, machine, load, versions."""
    return [
        f"Command: `{info['command']}`  ",
        f"Run: {info['started']} → {info['finished']} (UTC). {info['machine']}  ",
        f"Load average before: {info['uptime_before']}; after: {info['uptime_after']}.  ",
        f"Versions: {info['versions']}",
    ]


def machine_info(command: str, before: dict | None = None) -> dict:
    """What a reader needs to judge the numbers; call once before the run and once after (`before=`)."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    if before is not None:
        return {**before, "finished": now, "uptime_after": _uptime()}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    memory = psutil.virtual_memory().total / 2**30
    return {
        "command": command,
        "started": now,
        "uptime_before": _uptime(),
        "machine": f"{os.cpu_count()} CPU cores ({cpu}), {memory:.0f} GiB RAM, no GPU, {platform.platform()}.",
        "versions": _versions(),
    }


def replace_section(path: Path, title: str, section: str) -> None:
    """Replace the `## title` section of a markdown file (or append it), leaving every other section alone."""
    from medalign_rag.atomic import atomic_write_text

    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {title}"), None)
    if start is None:
        updated = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        updated = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    atomic_write_text(path, updated)


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1024 * 1024)


class PhaseTimer:
    """Wraps functions so a real run reports where its time went (a wrapper costs ~1 µs per call)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed


# ------------------------------------------------------------------------------------------------ workers


VARIANTS = {
    # name: (IndexSettings overrides, local engine group size or None for the settings' engine)
    "ours": ({}, None),
    # how a build ran before issue 14: reference encoder, one encode call per patient, no embedding cache
    "ours-before": ({"encoder": "torch-fp32", "embedding_cache": False}, 1),
    # the Ray engine on this machine with its default layout (one actor per node holding the node's CPUs), cache
    # off like a first build
    "ray": ({"engine": "ray", "embedding_cache": False}, None),
    # the layout before: 2 actors of 1 CPU each, 2 patients per task
    "ray-2x1": ({"engine": "ray", "ray": {"num_workers": 2, "num_cpus_per_worker": 1, "patients_per_task": 2},
                 "embedding_cache": False}, None),
    # 2 actors of 1 CPU with longer per-task streams (less padding per batch)
    "ray-2x1-8": ({"engine": "ray", "ray": {"num_workers": 2, "num_cpus_per_worker": 1, "patients_per_task": 8},
                   "embedding_cache": False}, None),
}


VARIANT_LABELS = {
    "ours-before": "medalign-rag before issue 14 (torch-fp32, one encode call per patient, no cache)",
    "ray": "medalign-rag `--engine ray` on this machine (default layout: 1 actor x 2 CPUs)",
    "ray-2x1": "medalign-rag `--engine ray` on this machine (2 actors x 1 CPU, 2 patients per task)",
    "ray-2x1-8": "medalign-rag `--engine ray` on this machine (2 actors x 1 CPU, 8 patients per task)",
}


def worker_ours(cohort: Path, index_dir: Path, variant: str = "ours") -> dict:
    import medalign_rag.index.engines.local as local_module
    from medalign_rag.index.builder import IndexBuilder, IndexSettings
    from medalign_rag.index.embedding import Embedder
    from medalign_rag.index.engines.local import LocalEngine
    from medalign_rag.records.dataset import DataFolder, open_data_folder

    overrides, group_windows = VARIANTS[variant]
    data = open_data_folder(cohort)
    settings = IndexSettings.model_validate({"index_dir": index_dir, **overrides})
    builder = IndexBuilder(settings)
    if settings.engine == "ray":
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    else:
        builder.embedder.encode_uncached(["warm-up"])  # model load + first-call overhead outside the clock
    rss_model = current_rss_mib()

    phases = PhaseTimer()
    local_module.chunk_record = phases.wrap("chunk_record", local_module.chunk_record)
    local_module.save_index = phases.wrap("save_index", local_module.save_index)
    DataFolder.fingerprint = phases.wrap("sha256 source", DataFolder.fingerprint)
    DataFolder.load_record = phases.wrap("read record XML", DataFolder.load_record)
    Embedder.chunk_windows = phases.wrap("chunk_windows", Embedder.chunk_windows)
    Embedder.embed_texts = phases.wrap("encode windows", Embedder.embed_texts)

    if group_windows is not None:
        builder.build = LocalEngine(builder, group_windows=group_windows).build
    first = builder.build(data)
    rss_first = peak_rss_mib()
    second = builder.build(data)
    # A fresh builder as a new `index` command would make (no model loaded: skipping never needs one)
    third = IndexBuilder(settings).build(data)
    failed = [r.patient_id for r in first.results if r.status == "failed"]
    if failed:
        raise SystemExit(f"{variant}: build failed for {failed}")
    return {
        "variant": variant,
        "encoder": settings.encoder,
        "engine": settings.engine,
        "seconds": first.seconds,
        "chunks": sum(r.chunks for r in first.results),
        "windows": sum(r.windows for r in first.results),
        "patients": len(first.results),
        "rss_after_model_mib": rss_model,
        "peak_rss_mib": rss_first,
        "phases": phases.seconds,
        "second_run_seconds": second.seconds,
        "second_run_skipped": second.count("skipped"),
        "fresh_builder_second_run_seconds": third.seconds,
    }


def worker_llama(cohort: Path, index_dir: Path) -> dict:
    import faiss
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.faiss import FaissVectorStore

    from medalign_rag.chunking import chunk_record
    from medalign_rag.index.embedding import packaged_model_path
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.tokenization import default_counter

    data = open_data_folder(cohort)
    counter = default_counter()
    embed_model = HuggingFaceEmbedding(model_name=str(packaged_model_path()), device="cpu")
    embed_model.get_text_embedding("warm-up")
    rss_model = current_rss_mib()

    chunk_seconds = 0.0
    n_chunks = 0
    started = time.perf_counter()
    for patient_id in data.patient_ids():
        chunk_started = time.perf_counter()
        chunks = chunk_record(data.load_record(patient_id), counter)
        chunk_seconds += time.perf_counter() - chunk_started
        nodes = [TextNode(text=chunk.text) for chunk in chunks]
        storage_context = StorageContext.from_defaults(vector_store=FaissVectorStore(faiss.IndexFlatIP(EMBED_DIM)))
        VectorStoreIndex(nodes, storage_context=storage_context, embed_model=embed_model)
        storage_context.persist(persist_dir=str(index_dir / patient_id))
        n_chunks += len(chunks)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "chunk_seconds": chunk_seconds,
        "chunks": n_chunks,
        "patients": len(data.patient_ids()),
        "embed_batch_size": embed_model.embed_batch_size,
        "max_length": embed_model.max_length,
        "rss_after_model_mib": rss_model,
        "peak_rss_mib": peak_rss_mib(),
    }


def worker_prototype(cohort: Path, sample_windows: int) -> dict:
    """Candidate speed-ups for the encode step, timed on the same real chunks.

    Nothing here changes the package: it shows the effect of a change before anyone makes it.
    """
    import copy

    import numpy as np
    import torch

    from medalign_rag.chunking import Chunk, chunk_record
    from medalign_rag.index.embedding import Embedder
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.tokenization import default_counter

    data = open_data_folder(cohort)
    counter = default_counter()
    embedder = Embedder()
    model = embedder.model
    tokenizer = embedder.tokenizer

    # Whole chunks in patient order until the sample is full, so the mix of notes and structured lines is real.
    chunks: list[Chunk] = []
    windows: list[str] = []
    for patient_id in data.patient_ids():
        for chunk in chunk_record(data.load_record(patient_id), counter):
            chunks.append(chunk)
            windows.extend(embedder.chunk_windows(chunk))
            if len(windows) >= sample_windows:
                break
        if len(windows) >= sample_windows:
            break

    def encoder_tokens(texts: list[str]) -> int:
        return sum(min(256, len(ids)) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"])

    def timed_encode(texts: list[str], batch_size: int, encoder=None) -> tuple[float, np.ndarray]:
        target = encoder or model
        started = time.perf_counter()
        vectors = target.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                show_progress_bar=False)
        return time.perf_counter() - started, vectors

    def row(texts: list[str], seconds: float, **extra: Any) -> dict:
        return {"seconds": seconds, "texts": len(texts), "tokens": encoder_tokens(texts), **extra}

    model.encode(windows[:8], batch_size=8)  # warm-up
    results: dict[str, dict] = {}
    base_seconds, base_vectors = timed_encode(windows, 64)
    results["baseline: fp32, batch 64"] = row(windows, base_seconds)
    seconds, _ = timed_encode(windows, 16)
    results["fp32, batch 16"] = row(windows, seconds)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds, _ = timed_encode(windows, 64)
    torch.set_num_threads(threads)
    results["fp32, batch 64, 1 torch thread"] = row(windows, seconds)

    def cosine_note(vectors: np.ndarray) -> str:
        cosine = (vectors * base_vectors).sum(axis=1)
        return f"cosine to fp32: mean {cosine.mean():.4f}, min {cosine.min():.4f}"

    # bfloat16 matmuls: oneDNN uses the CPU's AVX512-BF16/AMX units when present; embeddings barely move.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.encode(windows[:8], batch_size=8)
        bf_seconds, bf_vectors = timed_encode(windows, 64)
    results["bf16 autocast (torch.autocast('cpu', torch.bfloat16))"] = row(windows, bf_seconds,
                                                                             note=cosine_note(bf_vectors))

    quantized = copy.deepcopy(model)
    torch.ao.quantization.quantize_dynamic(quantized, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    quantized.encode(windows[:8], batch_size=8)
    q_seconds, q_vectors = timed_encode(windows, 64, quantized)
    results["int8 dynamic quantization of Linear layers"] = row(windows, q_seconds, note=cosine_note(q_vectors))

    return {"sample_windows": len(windows), "sample_chunks": len(chunks), "variants": results,
            "torch_threads": torch.get_num_threads()}


def padding_efficiency(cohort: Path) -> dict:
    """Real vs padded encoder tokens: per-patient encode calls (ours now) vs one cross-patient batch stream."""
    from transformers import AutoTokenizer

    from medalign_rag.chunking import chunk_record
    from medalign_rag.index.embedding import Embedder, packaged_model_path
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.tokenization import default_counter

    tokenizer = AutoTokenizer.from_pretrained(str(packaged_model_path()))
    data = open_data_folder(cohort)
    counter = default_counter()
    embedder = Embedder.__new__(Embedder)  # window logic only: no model needed for counting
    embedder.tokenizer = tokenizer
    from medalign_rag.index.embedding import WindowSettings

    embedder.windows = WindowSettings()
    embedder.window_tokens = 254
    per_patient: list[list[int]] = []
    llama_tokens = 0
    llama_full_tokens = 0  # what the chunk texts hold, before the encoder's 256-token cut
    llama_truncated = 0
    ours_chunks = 0
    for patient_id in data.patient_ids():
        chunks = chunk_record(data.load_record(patient_id), counter)
        ours_chunks += len(chunks)
        texts = [w for chunk in chunks for w in embedder.chunk_windows(chunk)]
        lengths = [min(256, len(ids)) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
        per_patient.append(lengths)
        chunk_lengths = [len(ids) for ids in tokenizer([c.text for c in chunks], add_special_tokens=True)["input_ids"]]
        llama_tokens += sum(min(256, n) for n in chunk_lengths)
        llama_full_tokens += sum(chunk_lengths)
        llama_truncated += sum(1 for n in chunk_lengths if n > 256)

    def padded(lengths: list[int], batch: int) -> int:
        ordered = sorted(lengths, reverse=True)  # sentence-transformers sorts each encode() call by length
        return sum(max(ordered[i : i + batch]) * len(ordered[i : i + batch]) for i in range(0, len(ordered), batch))

    real = sum(sum(p) for p in per_patient)
    return {
        "ours_real_tokens": real,
        "ours_windows": sum(len(p) for p in per_patient),
        "ours_padded_tokens_per_patient_batches": sum(padded(p, 64) for p in per_patient),
        "ours_padded_tokens_cross_patient": padded([n for p in per_patient for n in p], 64),
        "llama_index_real_tokens_truncated_at_256": llama_tokens,
        "llama_index_tokens_before_truncation": llama_full_tokens,
        "llama_index_chunks_truncated": llama_truncated,
        "chunks": ours_chunks,
    }


# ------------------------------------------------------------------------------------------------ driver


def combine_rounds(results: list[dict]) -> dict:
    """One figure per pipeline: mean seconds over the rounds, the highest peak RSS, the rest from round 1."""
    combined = dict(results[0])
    combined["rounds_seconds"] = [r["seconds"] for r in results]
    combined["rounds_load_1min_before"] = [r["load_1min_before"] for r in results]
    combined["seconds"] = sum(r["seconds"] for r in results) / len(results)
    if "chunk_seconds" in combined:
        combined["chunk_seconds"] = sum(r["chunk_seconds"] for r in results) / len(results)
    combined["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
    return combined


def run_worker(kind: str, cohort: Path, target: Path, extra: list[str] | None = None) -> dict:
    result_path = target.with_suffix(".json")
    command = [sys.executable, __file__, "--worker", kind, "--cohort", str(cohort), "--target", str(target),
               "--result", str(result_path), *(extra or [])]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def cli_second_run_seconds(cohort: Path, index_dir: Path) -> float:
    """`medalign-rag index` as a user runs it again: process start, imports, checks, all skipped."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medalign_rag.cli", "index", "--data", str(cohort), "--index-dir",
                    str(index_dir)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def render_section(args: argparse.Namespace, info: dict, ours: dict, llama: dict, pads: dict,
                   proto: dict | None, cli_seconds: float | None) -> str:
    from medalign_rag.chunking import DEFAULT_MAX_CHUNK_TOKENS

    ours_rate = ours["chunks"] / ours["seconds"]
    llama_rate = llama["chunks"] / llama["seconds"]
    llama_rate_no_chunk = llama["chunks"] / (llama["seconds"] - llama["chunk_seconds"])
    ours_tok = pads["ours_real_tokens"] / ours["seconds"]
    llama_tok = pads["llama_index_real_tokens_truncated_at_256"] / llama["seconds"]
    lines = [
        "## Index build",
        "",
        *run_header(info),
        "",
        f"Cohort: {ours['patients']} synthetic patients (seed {args.seed}), {ours['chunks']} chunks "
        f"(max {DEFAULT_MAX_CHUNK_TOKENS} cl100k tokens), {ours['windows']} embedding windows (ours).",
        "",
        "| pipeline | chunks | seconds | chunks/s | encoder tokens embedded | encoder tokens/s | peak RSS MiB "
        "(after model load) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| medalign-rag `IndexBuilder.build` | {ours['chunks']} | {ours['seconds']:.1f} | {ours_rate:.2f} | "
        f"{pads['ours_real_tokens']:,} | {ours_tok:,.0f} | {ours['peak_rss_mib']:.0f} "
        f"({ours['rss_after_model_mib']:.0f}) |",
        f"| llama-index VectorStoreIndex + FaissVectorStore + persist | {llama['chunks']} | {llama['seconds']:.1f} | "
        f"{llama_rate:.2f} | {pads['llama_index_real_tokens_truncated_at_256']:,} | {llama_tok:,.0f} | "
        f"{llama['peak_rss_mib']:.0f} ({llama['rss_after_model_mib']:.0f}) |",
        *[f"| {VARIANT_LABELS[kind]} | {v['chunks']} | {v['seconds']:.1f} | {v['chunks'] / v['seconds']:.2f} | "
          f"{pads['ours_real_tokens']:,} | {pads['ours_real_tokens'] / v['seconds']:,.0f} | {v['peak_rss_mib']:.0f} "
          f"({v['rss_after_model_mib']:.0f}) |" for kind, v in ours.get("variants", {}).items()],
        "",
        f"Ours: encoder {ours.get('encoder', 'torch-fp32')}, local engine (several patients' windows in one "
        f"length-sorted stream), embedding cache on (empty at the start of each round). Ray: model loading in its "
        f"actors is inside the clock; peak RSS is the driver's.",
        "",
        f"Seconds are the mean over {len(ours['rounds_seconds'])} round(s) in alternating order: ours "
        f"{', '.join(f'{x:.1f}' for x in ours['rounds_seconds'])} s; llama-index "
        f"{', '.join(f'{x:.1f}' for x in llama['rounds_seconds'])} s (1-min load average before each: ours "
        f"{', '.join(f'{x:.2f}' for x in ours['rounds_load_1min_before'])}; llama-index "
        f"{', '.join(f'{x:.2f}' for x in llama['rounds_load_1min_before'])}).",
        "",
        f"**Ratio ours / llama-index, chunks per second: {ours_rate / llama_rate:.2f}x** (target ≥ 2x"
        f"{': met' if ours_rate / llama_rate >= 2 else ': NOT met'}). Without llama-index's share of reading + "
        f"chunking ({llama['chunk_seconds']:.1f} s): {ours_rate / llama_rate_no_chunk:.2f}x. "
        f"Per encoder token: {ours_tok / llama_tok:.2f}x.",
        "",
        f"llama-index embeds each chunk's XML text cut at the encoder's {llama['max_length']} tokens (batch size "
        f"{llama['embed_batch_size']}): {pads['llama_index_chunks_truncated']} of {pads['chunks']} chunks are cut, "
        f"{pads['llama_index_real_tokens_truncated_at_256']:,} of their "
        f"{pads['llama_index_tokens_before_truncation']:,} encoder tokens are embedded. Ours embeds every event "
        f"of every chunk as compact entry lines in windows: {pads['ours_real_tokens']:,} encoder tokens "
        f"({pads['ours_real_tokens'] / pads['llama_index_real_tokens_truncated_at_256']:.2f}x llama-index's).",
        "",
        f"Where our build's time went (wrapped functions, round 1's build of {ours['rounds_seconds'][0]:.1f} s):",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in sorted(ours["phases"].items(), key=lambda item: -item[1]):
        if name == "sha256 source":
            continue  # also called inside save_index; listed below
        lines.append(f"| {name} | {seconds:.2f} | {100 * seconds / ours['rounds_seconds'][0]:.1f}% |")
    lines += [
        "",
        f"Padding: per-patient encode calls pad {pads['ours_real_tokens']:,} real tokens to "
        f"{pads['ours_padded_tokens_per_patient_batches']:,} "
        f"({100 * pads['ours_padded_tokens_per_patient_batches'] / pads['ours_real_tokens'] - 100:.1f}% waste); one "
        f"cross-patient stream would pad to {pads['ours_padded_tokens_cross_patient']:,} "
        f"({100 * pads['ours_padded_tokens_cross_patient'] / pads['ours_real_tokens'] - 100:.1f}%).",
        "",
        f"**Second `build` over the unchanged cohort** (round 1; same process, model loaded): {ours['second_run_seconds']:.2f} s"
        f" = **{100 * ours['second_run_seconds'] / ours['rounds_seconds'][0]:.2f}%** of the first (target < 5%), "
        f"{ours['second_run_skipped']}/{ours['patients']} skipped; a fresh IndexBuilder: "
        f"{ours['fresh_builder_second_run_seconds']:.2f} s."
        + (f" The `medalign-rag index` CLI as a new process (imports included): {cli_seconds:.1f} s = "
           f"{100 * cli_seconds / ours['seconds']:.1f}%." if cli_seconds is not None else ""),
    ]
    if proto:
        base = proto["variants"]["baseline: fp32, batch 64"]
        lines += [
            "",
            f"Prototype speed-ups of the encode step (`--prototype`; the same {proto['sample_chunks']} chunks of the "
            f"first patients each time, {proto['sample_windows']} baseline windows, torch threads "
            f"{proto['torch_threads']}, same run):",
            "",
            "| variant | windows | encoder tokens | seconds | speed-up vs baseline (same chunks) | note |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for name, row in proto["variants"].items():
            lines.append(f"| {name} | {row['texts']} | {row['tokens']:,} | {row['seconds']:.1f} | "
                         f"{base['seconds'] / row['seconds']:.2f}x | {row.get('note', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_PATIENTS} patients instead of --patients")
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md",
                        help="markdown file whose 'Index build' section is replaced")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing it")
    parser.add_argument("--prototype", action="store_true", help="also time candidate encode speed-ups")
    parser.add_argument("--prototype-windows", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2,
                        help="rounds of both pipelines, order alternating (ours, llama / llama, ours)")
    parser.add_argument("--skip-cli", action="store_true", help="skip timing the CLI's second run")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the section from a run's saved index-bench.json (no measuring)")
    # worker mode (internal)
    parser.add_argument("--variants", default="",
                        help="extra builds timed in the same rounds, comma-separated: ours-before, ray")
    parser.add_argument("--worker", choices=[*VARIANTS, "llama", "prototype"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--cohort", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        if args.worker in VARIANTS:
            result = worker_ours(args.cohort, args.target, args.worker)
        elif args.worker == "llama":
            result = worker_llama(args.cohort, args.target)
        else:
            result = worker_prototype(args.cohort, args.prototype_windows)
        args.result.write_text(json.dumps(result))
        return

    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        cohorts = sorted(args.from_json.parent.glob("cohort-*"))
        if cohorts:  # token counts are deterministic: recount so older saved runs get every field
            saved["padding"] = padding_efficiency(cohorts[0])
        section = render_section(args, saved["info"], saved["ours"], saved["llama"], saved["padding"],
                                 saved["prototype"], saved["cli_seconds"])
        print(section)
        if not args.no_write:
            replace_section(args.results, "Index build", section)
        return

    n_patients = QUICK_PATIENTS if args.quick else args.patients
    work = args.out or Path(tempfile.mkdtemp(prefix="index-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine_info(" ".join(["python", "benchmarks/index_bench.py", *sys.argv[1:]]))
    from medalign_rag.datasets.synthetic import generate_cohort

    cohort = work / f"cohort-{n_patients}-{args.seed}"
    if not any((cohort / name).is_dir() for name in ("medalign_ehr_xml", "ehrs")):  # either layout
        generate_cohort(cohort, n_patients, args.seed)
    for name in ("ours-index", "llama-index"):
        shutil.rmtree(work / name, ignore_errors=True)

    print(f"[index-bench] {n_patients} patients in {cohort}; counting tokens", flush=True)
    pads = padding_efficiency(cohort)
    print(f"[index-bench] {pads['chunks']} chunks, {pads['ours_windows']} windows", flush=True)
    # Rounds alternate the order (ours, llama / llama, ours / ...) so a load change on a shared machine
    # falls on both pipelines alike; each pipeline's figure is its mean over the rounds.
    extra = [v for v in args.variants.split(",") if v]
    unknown = [v for v in extra if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {', '.join(VARIANTS)}")
    kinds = ["ours", "llama", *extra]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for round_number in range(args.rounds):
        order = kinds if round_number % 2 == 0 else kinds[::-1]
        for kind in order:
            target = work / ("ours-index" if kind == "ours" else "llama-index" if kind == "llama" else f"{kind}-index")
            shutil.rmtree(target, ignore_errors=True)
            load_before = os.getloadavg()[0]
            print(f"[index-bench] round {round_number + 1}: {kind} (subprocess), load {load_before:.2f}", flush=True)
            result = run_worker(kind, cohort, target)
            result["load_1min_before"] = load_before
            runs[kind].append(result)
            print(f"[index-bench] round {round_number + 1}: {kind} {result['seconds']:.1f} s", flush=True)
    ours, llama = combine_rounds(runs["ours"]), combine_rounds(runs["llama"])
    ours["variants"] = {kind: combine_rounds(runs[kind]) for kind in extra}
    cli_seconds = None if args.skip_cli else cli_second_run_seconds(cohort, work / "ours-index")
    proto = None
    if args.prototype:
        print("[index-bench] prototypes (subprocess)", flush=True)
        proto = run_worker("prototype", cohort, work / "prototype",
                           ["--prototype-windows", str(args.prototype_windows)])
    info = machine_info(info["command"], before=info)
    (work / "index-bench.json").write_text(json.dumps({"ours": ours, "llama": llama, "padding": pads,
                                                       "prototype": proto, "cli_seconds": cli_seconds,
                                                       "info": info}, indent=2))
    section = render_section(args, info, ours, llama, pads, proto, cli_seconds)
    print(section)
    if not args.no_write:
        replace_section(args.results, "Index build", section)
        print(f"[index-bench] wrote the 'Index build' section of {args.results}")


if __name__ == "__main__":
    main()
