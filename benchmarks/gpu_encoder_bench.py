"""Encoder throughput of one GPU worker (issue 14: "encoding runs ... on a GPU when the worker has one").

Two steps, because the GPU machine is offline and gets only what travels with the checkout:

    # here (CPU): the windows our builder embeds for a synthetic cohort, their reference vectors (torch-fp32 on
    # the CPU, the encoder every faster path is validated against) and the packaged model, made small enough to
    # travel (only the word-embedding rows these windows use are kept; every other weight is copied bit for bit)
    python benchmarks/gpu_encoder_bench.py prepare --out .gpu/prepared

    # on the GPU machine: rebuild the model folder, run medalign_rag's own TorchEncoder on cuda (fp32 and bf16
    # autocast, several batch sizes) and sentence-transformers' encode for comparison, over the same windows
    python benchmarks/gpu_encoder_bench.py run --prepared .gpu/prepared --out $OUT

    # here: the RESULTS.md section from the JSON the GPU run wrote
    python benchmarks/gpu_encoder_bench.py report --result gpu-encoder-bench.json

A window's vector depends only on the rows of the tokens it contains, so the rebuilt model gives the vectors of the
packaged one on these windows; the run checks that by comparing with the CPU reference (cosine >= 0.999 per window,
the issue's validation rule).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
VALIDATION_COSINE = 0.999


def prepare(args: argparse.Namespace) -> None:
    from encoder_bench import cohort_windows
    from medalign_rag.datasets.synthetic import generate_cohort
    from medalign_rag.index.embedding import resolve_model_path
    from medalign_rag.index.encoders import load_encoder

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cohort = Path(tempfile.mkdtemp(prefix="gpu-bench-")) / "cohort"
    generate_cohort(cohort, args.patients, args.seed)
    per_patient = cohort_windows(cohort)
    texts = [text for windows in per_patient.values() for text in windows]
    (out / "windows.json").write_text(json.dumps({"patients": args.patients, "seed": args.seed, "texts": texts}))

    reference_encoder = load_encoder(MODEL, "torch", "fp32")
    tokens = reference_encoder.tokenizer(texts, add_special_tokens=True, truncation=True,
                                         max_length=reference_encoder.max_length)["input_ids"]
    used = np.array(sorted({i for ids in tokens for i in ids}), dtype=np.int64)
    started = time.perf_counter()
    reference = reference_encoder.encode(texts, 64)
    print(f"reference: {len(texts)} windows, {sum(map(len, tokens))} tokens, torch-fp32 CPU "
          f"{time.perf_counter() - started:.1f} s (load {os.getloadavg()[0]:.2f})")
    np.save(out / "reference.npy", reference)

    total = write_small_model(Path(resolve_model_path(MODEL)), used, out)
    print(f"kept {len(used)} of {total} word-embedding rows; wrote {out}")


def write_small_model(model_dir: Path, used_ids: np.ndarray, out: Path) -> int:
    """The model folder without its word-embedding matrix, plus the rows of `used_ids`: `rebuild_model` restores a
    model that embeds any text made of those tokens exactly as the original does."""
    from safetensors.numpy import load_file, save_file

    small = out / "model"
    shutil.copytree(model_dir, small, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.safetensors", "*.onnx"))
    weights = load_file(str(model_dir / "model.safetensors"))
    word_rows = weights.pop(WORD_EMBEDDINGS)
    np.savez(out / "word_rows.npz", ids=used_ids, rows=word_rows[used_ids], shape=np.array(word_rows.shape))
    save_file(weights, str(small / "weights-without-word-embeddings.safetensors"))
    return int(word_rows.shape[0])


def rebuild_model(prepared: Path, into: Path) -> Path:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(prepared / "model", into, dirs_exist_ok=True)
    weights = load_file(str(into / "weights-without-word-embeddings.safetensors"))
    (into / "weights-without-word-embeddings.safetensors").unlink()
    saved = np.load(prepared / "word_rows.npz")
    rows = np.zeros(tuple(saved["shape"]), dtype=saved["rows"].dtype)
    rows[saved["ids"]] = saved["rows"]
    weights[WORD_EMBEDDINGS] = rows
    save_file(weights, str(into / "model.safetensors"), metadata={"format": "pt"})
    return into


def run(args: argparse.Namespace) -> None:
    import torch

    from medalign_rag.index.embedding import load_sentence_model
    from medalign_rag.index.encoders import load_encoder

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this step runs on a GPU worker")
    prepared = args.prepared
    windows = json.loads((prepared / "windows.json").read_text())
    texts: list[str] = windows["texts"]
    reference = np.load(prepared / "reference.npy")
    model_dir = rebuild_model(prepared, Path(tempfile.mkdtemp(prefix="gpu-model-")))

    encoders = {dtype: load_encoder(str(model_dir), "torch", dtype, "cuda") for dtype in ("fp32", "bf16")}
    lengths = encoders["fp32"].token_lengths(texts)
    real_tokens = sum(lengths)
    sentence_model = load_sentence_model(str(model_dir)).to("cuda")

    runners = {}
    for dtype, encoder in encoders.items():
        for batch in args.batch_sizes:
            runners[f"medalign-rag TorchEncoder {dtype}, batch {batch}"] = (
                lambda e, b: lambda: e.encode(texts, b))(encoder, batch)
    for batch in args.batch_sizes:
        runners[f"sentence-transformers encode fp32, batch {batch}"] = (lambda b: lambda: sentence_model.encode(
            texts, batch_size=b, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False))(batch)

    for runner in runners.values():  # warm-up: cuBLAS handles, kernels, allocator
        runner()
    torch.cuda.synchronize()
    rows = []
    for name, runner in runners.items():
        seconds = []
        for _ in range(args.rounds):
            torch.cuda.synchronize()
            started = time.perf_counter()
            vectors = runner()
            torch.cuda.synchronize()
            seconds.append(time.perf_counter() - started)
        cosine = np.sum(np.asarray(vectors, dtype=np.float32) * reference, axis=1)
        best = min(seconds)
        rows.append({"variant": name, "seconds": seconds, "best_seconds": best,
                     "tokens_per_s": real_tokens / best, "median_tokens_per_s": real_tokens / float(np.median(seconds)),
                     "cosine_min": float(cosine.min()), "cosine_mean": float(cosine.mean()),
                     "valid": bool(cosine.min() >= VALIDATION_COSINE)})
        print(f"{name}: best {best:.3f} s, {real_tokens / best:,.0f} tokens/s, cosine min {cosine.min():.6f}",
              flush=True)
    props = torch.cuda.get_device_properties(0)
    result = {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
              "torch": torch.__version__, "python": platform.python_version(),
              "cpu_count": os.cpu_count(), "load_before_after": os.getloadavg(),
              "windows": len(texts), "patients": windows["patients"], "seed": windows["seed"],
              "real_tokens": real_tokens, "rounds": args.rounds, "rows": rows,
              "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-encoder-bench.json").write_text(json.dumps(result, indent=1))


def report(args: argparse.Namespace) -> None:
    result = json.loads(args.result.read_text())
    lines = [f"Run {result['started_utc']} UTC on one {result['gpu']} ({result['gpu_memory_gib']} GiB), "
             f"torch {result['torch']}, Python {result['python']}, {result['cpu_count']} CPU cores: "
             f"`benchmarks/gpu_encoder_bench.py run` over the {result['windows']:,} windows "
             f"({result['real_tokens']:,} real tokens) of the {result['patients']}-patient synthetic cohort "
             f"(seed {result['seed']}); best of {result['rounds']} rounds after a warm-up. Cosine: each window "
             f"against torch-fp32 on the CPU (this machine); valid = every window >= {VALIDATION_COSINE}.", "",
             "| variant | best s | encoder tokens/s (best) | tokens/s (median) | cosine min | valid |",
             "|---|---:|---:|---:|---:|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['variant']} | {row['best_seconds']:.3f} | {row['tokens_per_s']:,.0f} | "
                     f"{row['median_tokens_per_s']:,.0f} | {row['cosine_min']:.5f} | "
                     f"{'yes' if row['valid'] else 'no'} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    p = steps.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patients", type=int, default=12)
    p.add_argument("--seed", type=int, default=7)
    r = steps.add_parser("run")
    r.add_argument("--prepared", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    s = steps.add_parser("report")
    s.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    {"prepare": prepare, "run": run, "report": report}[args.step](args)


if __name__ == "__main__":
    main()
