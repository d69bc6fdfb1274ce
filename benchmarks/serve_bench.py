"""`medalign-rag serve` under bounded load on loopback: asks per second, latency percentiles, errors, server memory.

    python benchmarks/serve_bench.py                # 1, 8 and 32 clients; budgets 2048 and 32768; ~900 asks
    python benchmarks/serve_bench.py --torch-threads 1,default   # the plan once per serve setting
    python benchmarks/serve_bench.py --quick        # fewer asks per run

Setup (not timed): the 50-patient synthetic cohort (seed 7); a data folder holding its longest record (about 120k
cl100k tokens) plus the five smallest patients; `medalign-rag serve --backend none` started on a free loopback
port as a subprocess (its own process, as a user runs it); every patient asked once per strategy and budget so all
indexes are built and loaded and every strategy's per-index state exists.

Timed: clients (asyncio + httpx, one connection each) POST /api/ask as fast as the server answers, each run
stopping after a fixed number of asks. Every ask is distinct (a question of the cohort's instruction table, numbered,
about one of the six patients, strategies hybrid and temporal alternating), so the pipeline's ranking cache and the
embedder's query cache never answer for the server; half of the asks go to the longest record. Reported per
(budget, clients): asks/s, client-side latency p50/p95/p99, errors (any non-200 or transport error), the server's
own time in retrieval and packing (`timings.context_s` of each answer), and response size. The server's RSS is
sampled every 0.2 s; the load average is read before and after. The whole plan runs once per `--torch-threads`
value (default: the option not given, i.e. torch's one thread per core), each against its own fresh server on the
same indexes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_bench import machine_info, replace_section, run_header  # noqa: E402

SMALL_PATIENTS = 5
STRATEGIES = ("hybrid", "temporal")
SECTION = "Serve: HTTP API under load (backend none)"


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def build_data(work: Path) -> tuple[Path, str, dict[str, int], list[str]]:
    """The cohort, then a folder with the big patient and the small ones; returns (folder, big id, tokens, questions)."""
    from medalign_rag.datasets.synthetic import generate_cohort
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.records.serialize import render_record
    from medalign_rag.tokenization import default_counter

    cohort = work / "cohort"
    if not any((cohort / name).is_dir() for name in ("medalign_ehr_xml", "ehrs")):  # either layout
        generate_cohort(cohort, n_patients=50, seed=7)
    folder = open_data_folder(cohort)
    counter = default_counter()
    tokens = {pid: counter.count(render_record(folder.load_record(pid), include_ids=False))
              for pid in folder.patient_ids()}
    big = max(sorted(tokens), key=lambda pid: tokens[pid])  # the longest record (~120k tokens)
    small = sorted((pid for pid in tokens if pid != big), key=lambda pid: (tokens[pid], pid))[:SMALL_PATIENTS]
    data = work / "serve-data"
    (data / "medalign_ehr_xml").mkdir(parents=True, exist_ok=True)
    for pid in [big, *small]:
        shutil.copyfile(folder.record_path(pid), data / "medalign_ehr_xml" / f"{pid}.xml")
    questions = sorted({i.question for i in folder.instructions()})
    return data, big, {pid: tokens[pid] for pid in [big, *small]}, questions


class Server:
    def __init__(self, data: Path, index_dir: Path, log_path: Path, torch_threads: str) -> None:
        from tests.serve_support import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "medalign_rag.cli", "serve", "--data", str(data), "--index-dir",
                   str(index_dir), "--backend", "none", "--port", str(self.port), "--log-level", "warning"]
        if torch_threads != "default":
            command += ["--torch-threads", torch_threads]
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.rss_samples: list[float] = []
        self._sampling = False

    def wait_ready(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("serve did not start")

    def rss_mib(self) -> float:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss / 2**20

    def start_sampling(self) -> None:
        self._sampling = True

        def sample() -> None:
            while self._sampling:
                self.rss_samples.append(self.rss_mib())
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> None:
        self._sampling = False
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def run_load(url: str, bodies: list[dict], clients: int) -> dict:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    context_s: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=1)) as http:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                try:
                    response = await http.post("/api/ask", json=body)
                except httpx.HTTPError as error:
                    errors.append(type(error).__name__)
                    continue
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"HTTP {response.status_code}")
                    continue
                sizes.append(len(response.content))
                context_s.append(response.json()["timings"]["context_s"])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients, "asks": len(bodies), "wall_s": wall, "asks_per_s": len(latencies) / wall,
        "p50_ms": percentile(latencies, 50) * 1000, "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000, "errors": len(errors), "error_kinds": sorted(set(errors)),
        "context_ms_mean": statistics.fmean(context_s) * 1000 if context_s else float("nan"),
        "latency_ms_mean": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "response_kib_mean": statistics.fmean(sizes) / 1024 if sizes else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer asks per run.")
    parser.add_argument("--out", type=Path, default=None, help="Work folder (default: a temporary one).")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--torch-threads", default="default",
                        help="Comma-separated `serve --torch-threads` values ('default': the option not given); "
                             "each gets its own server and runs.")
    args = parser.parse_args()
    command = "python benchmarks/serve_bench.py" + (" --quick" if args.quick else "") + (
        f" --torch-threads {args.torch_threads}" if args.torch_threads != "default" else "")
    info = machine_info(command)
    work = args.out or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    print("building the cohort ...", flush=True)
    data, big, tokens, questions = build_data(work)
    patients = list(tokens)
    import httpx

    plan = [(2048, 1, 40), (2048, 8, 300), (2048, 32, 300), (32768, 1, 20), (32768, 8, 120), (32768, 32, 120)]
    if args.quick:
        plan = [(budget, clients, max(10, asks // 3)) for budget, clients, asks in plan]
    counter = 0

    def bodies_for(budget: int, count: int) -> list[dict]:
        nonlocal counter
        bodies = []
        for _ in range(count):
            question = questions[counter % len(questions)]
            # half to the big patient, the rest round-robin over the small ones
            pid = big if counter % 2 == 0 else patients[1 + (counter // 2) % (len(patients) - 1)]
            bodies.append({"patient_id": pid, "question": f"Request {counter}: {question}",
                           "strategy": STRATEGIES[(counter // 2) % 2], "budget": budget})
            counter += 1
        return bodies

    rows = []
    memory: dict[str, dict[str, float]] = {}
    warm_s = 0.0
    for threads in args.torch_threads.split(","):
        server = Server(data, work / "indexes", work / f"server-{threads}.log", threads)
        try:
            server.wait_ready()
            rss_idle = server.rss_mib()
            print(f"torch threads {threads}: building and loading every index (not timed) ...", flush=True)
            warm_started = time.perf_counter()
            for pid in patients:
                for strategy in STRATEGIES:  # each strategy's per-index state is built on its first use
                    for budget in (2048, 32768):
                        response = httpx.post(f"{server.url}/api/ask", timeout=600, json={
                            "patient_id": pid, "question": "warm-up: most recent labs", "strategy": strategy,
                            "budget": budget})
                        response.raise_for_status()
            warm_s = max(warm_s, time.perf_counter() - warm_started)
            rss_loaded = server.rss_mib()
            server.start_sampling()
            for budget, clients, asks in plan:
                row = asyncio.run(run_load(server.url, bodies_for(budget, asks), clients))
                row.update(budget=budget, torch_threads=threads)
                rows.append(row)
                print(json.dumps(row), flush=True)
            memory[threads] = {"idle": rss_idle, "loaded": rss_loaded,
                               "peak": max(server.rss_samples) if server.rss_samples else server.rss_mib()}
        finally:
            server.stop()
    info = machine_info(command, before=info)

    lines = [f"## {SECTION}", "", *run_header(info), ""]
    sizes = ", ".join(f"{pid} {n:,}" for pid, n in tokens.items())
    lines += [
        f"Data: 6 patients of the 50-patient synthetic cohort (seed 7): {sizes} cl100k tokens. "
        f"`medalign-rag serve --backend none` in its own process on loopback; the client (asyncio + httpx, one "
        f"connection per client) runs on the same 2 cores. Every ask distinct (numbered cohort questions), half "
        f"of them about {big}, strategies hybrid and temporal alternating; each run stops after its asks. Setup, "
        f"not timed: first ask per patient, strategy and budget (index builds, loads, per-strategy state) {warm_s:.1f} s.",
        "",
        "| torch threads | budget | clients | asks | asks/s | p50 ms | p95 ms | p99 ms | errors "
        "| server retrieval+packing, mean ms | latency mean ms | response KiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['torch_threads']} | {r['budget']} | {r['clients']} | {r['asks']} | {r['asks_per_s']:.1f} | "
                     f"{r['p50_ms']:.0f} | "
                     f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {r['context_ms_mean']:.0f} | "
                     f"{r['latency_ms_mean']:.0f} | {r['response_kib_mean']:.0f} |")
    first = rows[-1]["torch_threads"]  # the last setting run: `default` in the usual order
    single = next(r for r in rows if r["budget"] == 2048 and r["clients"] == 1 and r["torch_threads"] == first)
    eight = next(r for r in rows if r["budget"] == 2048 and r["clients"] == 8 and r["torch_threads"] == first)
    share = single["context_ms_mean"] / single["latency_ms_mean"]
    lines += ["", f"What dominates (torch threads: {first}): with one client at 2k an ask takes {single['latency_ms_mean']:.0f} ms, of which "
                  f"the server's retrieval and packing are {single['context_ms_mean']:.0f} ms ({share:.0%}); the rest "
                  f"is HTTP, validation, JSON encoding of the answer with its context, and the worker-thread hop. "
                  f"With 8 clients the server is saturated: mean latency {eight['latency_ms_mean']:.0f} ms is mostly "
                  f"waiting (8 clients / {eight['asks_per_s']:.1f} asks/s = {8 / eight['asks_per_s'] * 1000:.0f} ms), "
                  f"and the server's own retrieval time per ask rises to {eight['context_ms_mean']:.0f} ms as requests "
                  f"share the GIL and the 2 cores with each other and with the load generator."]
    lines += ["", "Server RSS: " + "; ".join(
        f"torch threads {threads}: {m['idle']:.0f} MiB after start (embedding model loaded), {m['loaded']:.0f} MiB "
        f"with all 6 indexes loaded, peak {m['peak']:.0f} MiB during the load" for threads, m in memory.items()) + ".",
        ""]
    (work / "serve_bench.json").write_text(json.dumps({"rows": rows, "tokens": tokens, "rss": memory, "info": info},
                                                     indent=2))
    replace_section(args.results, SECTION, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
