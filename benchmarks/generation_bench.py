"""Local backend (SmolLM2-135M-Instruct on CPU): load time cold vs cached, and generation speed.

    python benchmarks/generation_bench.py [--repeats 3] [--max-tokens 64] [--prompt-tokens 1000]

"Cold" converts the GGUF into a fresh temporary cache (what the first run on a machine pays); "cached" loads the
converted copy (every later run). Speed: one ~1k-token MedAlign-shaped prompt, greedy, `--max-tokens` new tokens
(the model may stop earlier at its end-of-turn token; the table shows what it produced), then a batch of 4.
Writes its section of benchmarks/RESULTS.md (other sections are left as they are).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medalign_rag.generation import create_generator, load_prompt_template

QUESTION = "Summarize the patient's diabetes management over the last year, with the dates of the encounters used."


def synthetic_ehr(line_count: int) -> str:
    """EHR-like text (not real data): dated encounters with labs, drugs and short notes."""
    lines = []
    for i in range(line_count):
        day = 1 + i % 28
        month = 1 + (i // 28) % 12
        lines.append(
            f"[2021-{month:02d}-{day:02d} 09:{i % 60:02d}] encounter {i}: measurement Hemoglobin A1c {6.5 + (i % 20) / 10:.1f} %;"
            f" drug metformin {500 + 250 * (i % 3)} mg; note: follow-up, glucose {110 + i % 90} mg/dL, no hypoglycaemia."
        )
    return "\n".join(lines)


def prompt_of_about(generator, tokens: int) -> str:
    """The rendered prompt whose chat-templated length is the largest not above `tokens`."""
    template = load_prompt_template()
    low, high = 1, 400
    while low < high:
        middle = (low + high + 1) // 2
        prompt = template.render(QUESTION, synthetic_ehr(middle), datetime(2022, 1, 1))
        if generator.count_prompt_tokens(prompt) <= tokens:
            low = middle
        else:
            high = middle - 1
    return template.render(QUESTION, synthetic_ehr(low), datetime(2022, 1, 1))


def bench_llama_server(prompt: str, max_tokens: int, repeats: int, threads: int) -> list[tuple[str, str]]:
    """The same prompt through the `openai` backend against llama-cpp-python's server (SmolLM2 Q4_1 GGUF)."""
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError:
        return [("llama.cpp server via openai backend", "skipped: llama-cpp-python[server] not installed")]
    import socket
    import subprocess

    import httpx

    from medalign_rag.generation.local import find_smollm2_gguf

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(find_smollm2_gguf()),
        "--model_alias",
        "smollm2",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "4096",
        "--n_threads",
        str(threads),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            return [("llama.cpp server via openai backend", "skipped: server did not start")]
        with create_generator("openai", base_url=base_url, context_length=4096, tokenizer="local") as generator:
            generator.generate(["Warm up."], max_tokens=4)
            # A different first line each time: llama.cpp reuses the KV cache of a repeated prefix.
            runs = [generator.generate([f"Run {i}.\n{prompt}"], max_tokens=max_tokens)[0] for i in range(repeats)]
            t0 = time.perf_counter()
            batch = generator.generate([f"Batch {i}.\n{prompt}" for i in range(4)], max_tokens=max_tokens)
            batch_wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    completion = statistics.median(r.completion_tokens for r in runs)
    latency = statistics.median(r.latency_s for r in runs)
    batch_tokens = sum(r.completion_tokens for r in batch)
    return [
        (f"llama.cpp server (Q4_1, {threads} threads) via openai backend: tokens produced (median)", f"{completion:g}"),
        ("llama.cpp server: latency (median)", f"{latency:.2f} s"),
        ("llama.cpp server: end-to-end tokens/s (prefill included)", f"{completion / latency:.1f}"),
        (
            "llama.cpp server: batch of 4, concurrency 4 (the server decodes one at a time)",
            f"{batch_tokens} / {batch_wall:.2f} s = {batch_tokens / batch_wall:.1f} tok/s",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads while generating (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    import torch
    import transformers

    import_s = time.perf_counter() - started

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="medalign-bench-cache-") as cache:
        cold = create_generator("local", cache_dir=Path(cache))
        assert not cold.loaded_from_cache
        cold_s = cold.load_seconds
        cold.close()
        del cold
        gc.collect()

        cached_times = []
        for _ in range(args.repeats):
            generator = create_generator("local", cache_dir=Path(cache))
            assert generator.loaded_from_cache
            cached_times.append(generator.load_seconds)
            generator.close()
            del generator
            gc.collect()

        generator = create_generator("local", cache_dir=Path(cache), threads=args.threads)
        prompt = prompt_of_about(generator, args.prompt_tokens)
        generator.generate(["Warm up."], max_tokens=4)

        first_token = [generator.generate([prompt], max_tokens=1)[0].latency_s for _ in range(args.repeats)]
        runs = [generator.generate([prompt], max_tokens=args.max_tokens)[0] for _ in range(args.repeats)]
        prompt_tokens = runs[0].prompt_tokens
        completion = statistics.median(r.completion_tokens for r in runs)
        latency = statistics.median(r.latency_s for r in runs)
        ttft = statistics.median(first_token)
        decode_rate = (completion - 1) / (latency - ttft) if latency > ttft and completion > 1 else float("nan")

        batch = [prompt] * 4
        batch_runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            results = generator.generate(batch, max_tokens=args.max_tokens)
            batch_runs.append((sum(r.completion_tokens for r in results), time.perf_counter() - t0))
        batch_tokens, batch_wall = sorted(batch_runs, key=lambda run: run[1])[len(batch_runs) // 2]
        generator.close()

    rows = [
        ("generation threads", str(args.threads or torch.get_num_threads())),
        ("import torch + transformers", f"{import_s:.1f} s"),
        ("load, cold (GGUF -> converted cache)", f"{cold_s:.1f} s"),
        (f"load, cached (median of {args.repeats})", f"{statistics.median(cached_times):.1f} s"),
        ("prompt tokens (chat template included)", f"{prompt_tokens}"),
        (f"prefill, time to first token (median of {args.repeats})", f"{ttft:.2f} s"),
        (f"generate max_tokens={args.max_tokens}: tokens produced (median)", f"{completion:g}"),
        ("generate: latency (median)", f"{latency:.2f} s"),
        ("generate: end-to-end tokens/s (prefill included)", f"{completion / latency:.1f}"),
        ("generate: decode tokens/s (prefill excluded)", f"{decode_rate:.1f}"),
        (
            "batch of 4 (batch_size=4): completion tokens / wall (median)",
            f"{batch_tokens} / {batch_wall:.2f} s = {batch_tokens / batch_wall:.1f} tok/s",
        ),
    ]
    rows += bench_llama_server(prompt, args.max_tokens, args.repeats, args.threads or os.cpu_count() or 1)
    header = (
        f"## Local generation backend: SmolLM2-135M-Instruct (fp32, CPU)\n\n"
        f"Machine: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, Python {platform.python_version()}; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (above the core count, other work shared the CPU). "
        f"Measured {datetime.now():%Y-%m-%d} by `python benchmarks/generation_bench.py`.\n\n"
    )
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows) + "\n"
    text = header + table
    print(text)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from index_bench import replace_section

    replace_section(args.out, "Local generation backend: SmolLM2-135M-Instruct (fp32, CPU)", text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
