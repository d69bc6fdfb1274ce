"""Encoder speed and fidelity: PyTorch fp32 / bf16, ONNX Runtime and OpenVINO, one cross-patient batch stream.

    python benchmarks/encoder_bench.py                 # 12-patient synthetic cohort (seed 7), >= 768 windows timed
    python benchmarks/encoder_bench.py --no-write      # print the section instead of replacing it in RESULTS.md

What it measures, on the real windows our builder embeds (Embedder.chunk_windows over the chunks of each record):
* padding: encoder tokens after padding, per-patient encode calls (today's builder: one sentence-transformers
  `encode` per patient, batch 64) vs one stream of all patients' windows sorted by token length (batch 64);
* per variant, on the windows of the first patients (whole patients, >= --sample windows): seconds, real encoder tokens per
  second, and the cosine of each window's vector to today's (sentence-transformers fp32, per patient). A variant
  passes validation only when every window's cosine is >= 0.999.
Rounds alternate the variants' order so load changes on a shared machine fall on all of them alike; each figure
is the mean over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from index_bench import machine_info, replace_section, run_header  # noqa: E402

VALIDATION_COSINE = 0.999
VARIANTS = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16")]


def cohort_windows(cohort: Path) -> dict[str, list[str]]:
    from medalign_rag.chunking import chunk_record
    from medalign_rag.index.embedding import Embedder
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.tokenization import default_counter

    data = open_data_folder(cohort)
    embedder = Embedder()
    counter = default_counter()
    return {pid: [w for chunk in chunk_record(data.load_record(pid), counter) for w in embedder.chunk_windows(chunk)]
            for pid in data.patient_ids()}


def padded_tokens(lengths: list[int], batch: int) -> int:
    ordered = sorted(lengths, reverse=True)
    return sum(ordered[i] * len(ordered[i : i + batch]) for i in range(0, len(ordered), batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample", type=int, default=768, help="windows timed per variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--variants", default=",".join(f"{b}-{d}" for b, d in VARIANTS),
                        help="encoders to time, comma-separated (default: all)")
    parser.add_argument("--unrounded", action="store_true",
                        help="also time openvino-bf16 with batches padded to their longest text only (not to 16)")
    parser.add_argument("--int8-graph", type=Path, default=None,
                        help="also time this OpenVINO IR (an NNCF int8 quantization of the model), bf16 elsewhere")
    args = parser.parse_args()

    import torch

    from medalign_rag.datasets.synthetic import generate_cohort
    from medalign_rag.index.embedding import load_model_for, load_sentence_model, resolve_model_path
    from medalign_rag.index.encoders import EncoderSpec, OpenVinoEncoder, cpu_supports_bf16, load_encoder

    info = machine_info(" ".join(["python", "benchmarks/encoder_bench.py", *sys.argv[1:]]))
    work = args.out or Path(tempfile.mkdtemp(prefix="encoder-bench-"))
    cohort = work / f"cohort-{args.patients}-{args.seed}"
    if not any((cohort / name).is_dir() for name in ("medalign_ehr_xml", "ehrs")):  # either layout
        generate_cohort(cohort, args.patients, args.seed)
    per_patient = cohort_windows(cohort)
    model = load_sentence_model("all-MiniLM-L6-v2")
    chosen = [EncoderSpec.parse(label) for label in args.variants.split(",")]
    encoders = {spec.label: load_encoder("all-MiniLM-L6-v2", spec.backend, spec.dtype) for spec in chosen}
    if args.unrounded:
        unrounded = OpenVinoEncoder(load_model_for("all-MiniLM-L6-v2", "openvino"), EncoderSpec("openvino", "bf16"),
                                    Path(resolve_model_path("all-MiniLM-L6-v2")))
        unrounded.width_multiple = 1
        encoders["openvino-bf16 (widths not rounded to 16)"] = unrounded
    if args.int8_graph:
        encoders[f"openvino-int8 ({args.int8_graph.parent.name}) + bf16"] = OpenVinoEncoder(
            load_model_for("all-MiniLM-L6-v2", "openvino"), EncoderSpec("openvino", "bf16"),
            Path(resolve_model_path("all-MiniLM-L6-v2")), graph_path=args.int8_graph)
    lengths_of = next(iter(encoders.values())).token_lengths

    all_lengths = {pid: lengths_of(texts) for pid, texts in per_patient.items()}
    real = sum(sum(v) for v in all_lengths.values())
    per_patient_padded = sum(padded_tokens(v, args.batch_size) for v in all_lengths.values())
    stream_padded = padded_tokens([n for v in all_lengths.values() for n in v], args.batch_size)

    # Whole patients, in id order, until the sample is full: per-patient batching is then exactly what the builder
    # did before (each patient's own mix of short lab lines and long note windows).
    total = sum(len(v) for v in per_patient.values())
    sample_by_patient: dict[str, list[str]] = {}
    for pid, texts in per_patient.items():
        if sum(len(v) for v in sample_by_patient.values()) >= args.sample:
            break
        sample_by_patient[pid] = texts
    sample = [t for texts in sample_by_patient.values() for t in texts]
    sample_tokens = sum(lengths_of(sample))
    sample_pp_padded = sum(padded_tokens(lengths_of(v), args.batch_size) for v in sample_by_patient.values() if v)
    sample_stream_padded = padded_tokens(lengths_of(sample), args.batch_size)

    def baseline() -> np.ndarray:
        parts = [model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True,
                              show_progress_bar=False) for texts in sample_by_patient.values() if texts]
        return np.concatenate(parts).astype(np.float32)

    runners = {"sentence-transformers fp32, per patient (today)": baseline}
    runners["sentence-transformers fp32, one stream"] = lambda: model.encode(
        sample, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    for label, encoder in encoders.items():
        runners[f"{label}, one length-sorted stream"] = (lambda e: lambda: e.encode(sample, args.batch_size))(encoder)
    # warm-up: first calls allocate, compile and tune kernels
    for encoder in encoders.values():
        encoder.encode(sample[:32], args.batch_size)
    model.encode(sample[:32], batch_size=args.batch_size)

    reference = baseline()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    loads: dict[str, list[float]] = {name: [] for name in runners}
    cosines: dict[str, np.ndarray] = {}
    names = list(runners)
    for round_number in range(args.rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            load = os.getloadavg()[0]
            loads[name].append(load)
            started = time.perf_counter()
            vectors = runners[name]()
            seconds[name].append(time.perf_counter() - started)
            cosines[name] = (np.asarray(vectors, dtype=np.float32) * reference).sum(axis=1)
            print(f"[encoder-bench] round {round_number + 1} {name}: {seconds[name][-1]:.1f} s (load {load:.2f})",
                  flush=True)
    info = machine_info(info["command"], before=info)
    base = float(np.mean(seconds[names[0]]))
    rows = []
    for name in names:
        mean = float(np.mean(seconds[name]))
        cos = cosines[name]
        rows.append({"variant": name, "seconds": mean, "rounds": seconds[name], "tokens_per_s": sample_tokens / mean,
                     "speedup": base / mean, "loads": loads[name], "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
                     "valid": bool(cos.min() >= VALIDATION_COSINE)})
    result = {"info": info, "rows": rows, "windows": total, "real_tokens": real,
              "per_patient_padded": per_patient_padded, "stream_padded": stream_padded,
              "sample_windows": len(sample), "sample_patients": len(sample_by_patient), "sample_tokens": sample_tokens, "sample_pp_padded": sample_pp_padded,
              "sample_stream_padded": sample_stream_padded, "torch_threads": torch.get_num_threads(),
              "bf16_native": cpu_supports_bf16(), "patients": len(per_patient)}
    (work / "encoder-bench.json").write_text(json.dumps(result, indent=2))
    section = render(result, args)
    print(section)
    if not args.no_write:
        replace_section(args.results, "Encoder", section)
        print(f"[encoder-bench] wrote the 'Encoder' section of {args.results}")


def render(result: dict, args: argparse.Namespace) -> str:
    def share(padded: int, real: int) -> str:
        return f"{100 * (padded - real) / padded:.1f}%"

    lines = ["## Encoder", "", *run_header(result["info"]), "",
             f"Cohort: {result['patients']} synthetic patients (seed {args.seed}), {result['windows']} windows, "
             f"{result['real_tokens']:,} real encoder tokens. Padding share of encoded tokens at batch "
             f"{args.batch_size}: per-patient encode calls {share(result['per_patient_padded'], result['real_tokens'])}"
             f" ({result['per_patient_padded']:,} tokens), one cross-patient length-sorted stream "
             f"{share(result['stream_padded'], result['real_tokens'])} ({result['stream_padded']:,}).", "",
             f"Timed: {result['sample_windows']} windows of the first {result['sample_patients']} patients ({result['sample_tokens']:,} "
             f"real tokens; padding per patient {share(result['sample_pp_padded'], result['sample_tokens'])}, one "
             f"stream {share(result['sample_stream_padded'], result['sample_tokens'])}), torch threads "
             f"{result['torch_threads']}, CPU bf16 units (AVX512-BF16/AMX): {'yes' if result['bf16_native'] else 'no'}. "
             f"Seconds are the mean of {args.rounds} rounds in alternating order. Cosine: each window's vector against"
             f" today's (sentence-transformers fp32, per patient); valid = every window >= {VALIDATION_COSINE}.", "",
             "| variant | seconds | encoder tokens/s | speed-up | cosine min | cosine mean | valid | 1-min load before each round |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['seconds']:.2f} | {row['tokens_per_s']:,.0f} | {row['speedup']:.2f}x |"
                     f" {row['cos_min']:.5f} | {row['cos_mean']:.5f} | {'yes' if row['valid'] else 'NO'} |"
                     f" {', '.join(f'{x:.2f}' for x in row['loads'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
