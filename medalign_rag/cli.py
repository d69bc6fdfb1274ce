"""`medalign-rag` command line: synth, inspect, convert, index, ask, bench, demo."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from medalign_rag.errors import MedalignError


def _plain_flag_help(command, parent=None):
    """Show on/off flags as bare flags in help (typer's rich help labels them `<bool>`, as if they took a value).

    Duck-typed because typer >= 0.19 vendors its own copy of click, so `click.Option` is not its option class."""
    context = command.context_class(command, parent=parent, info_name=command.name)
    for param in command.get_params(context):  # includes --help, which click makes on first use and keeps
        if (getattr(param, "is_flag", False) or getattr(param, "count", False)) and param.metavar is None:
            param.metavar = ""
    return command


class _Group(typer.core.TyperGroup):
    """Typer's group, with every command's help cleaned by `_plain_flag_help` as it is looked up."""

    def get_command(self, ctx, cmd_name: str):
        command = super().get_command(ctx, cmd_name)
        return _plain_flag_help(command, ctx) if command is not None else None

    def format_help(self, ctx, formatter) -> None:
        _plain_flag_help(self, ctx.parent)
        super().format_help(ctx, formatter)


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Answer clinicians' instructions over long EHRs with retrieval, and measure it (MedAlign).",
)
convert_app = typer.Typer(cls=_Group, no_args_is_help=True,
                          help="Convert public datasets into MedAlign's release layout.")
app.add_typer(convert_app, name="convert")
export_app = typer.Typer(no_args_is_help=True, help="Write records in another standard format.")
app.add_typer(export_app, name="export")

console = Console(stderr=True)
stdout = Console()


class LineProgress:
    """Progress for a stderr that is not a terminal (a log file, CI, a pipe): plain lines instead of a bar.

    Same calls as rich's Progress (add_task, advance, update, a context manager). A line is written when a task's
    description changes (the index build names each patient), at every step of a short task and at every 5% of a
    long one, and when it completes, so a long run shows it is alive without flooding the log. Nothing is written
    before the first step, so a command that fails at once prints its one error line alone.
    """

    LINE_EVERY_STEP_UP_TO = 100

    def __init__(self, stream=None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_ignored) -> int:
        task_id = len(self.tasks)
        self.tasks[task_id] = {"description": description, "total": total, "completed": 0, "shown": 0}
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               description: str | None = None, total: float | None = None, **_ignored) -> None:
        task = self.tasks[task_id]
        renamed = description is not None and description != task["description"]
        if description is not None:
            task["description"] = description
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance:
            task["completed"] += advance
        done, total = task["completed"], task["total"]
        if not total:
            due = renamed
        elif total <= self.LINE_EVERY_STEP_UP_TO:
            due = renamed or done != task["shown"]
        else:
            due = renamed or done >= total or int(done * 20 // total) != int(task["shown"] * 20 // total)
        if due:
            self._write(task_id)

    def _write(self, task_id: int) -> None:
        task = self.tasks[task_id]
        task["shown"] = task["completed"]
        total = task["total"]
        count = f"{int(task['completed'])}/{int(total)}" if total else f"{int(task['completed'])}"
        self.stream.write(f"{task['description']}: {count}\n")
        self.stream.flush()


def progress_bar() -> Progress | LineProgress:
    """A progress display on stderr: a live bar in a terminal, plain lines otherwise (MEDALIGN_PROGRESS=1 forces
    the bar, MEDALIGN_PROGRESS=0 silences progress)."""
    setting = os.environ.get("MEDALIGN_PROGRESS")
    if setting == "0":
        return Progress(console=console, disable=True)
    if not console.is_terminal and setting != "1":
        return LineProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def print_json(payload) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


DATA_HELP = ("Records: a MedAlign folder (medalign_ehr_xml/ or ehrs/ with XML [+ instruction TSVs]), a MEDS folder, "
             "an OMOP CDM (.duckdb file or folder of CSV/parquet tables) or FHIR R4 (Bundle .json / .ndjson files).")


def _format_help() -> str:
    from medalign_rag.records.sources import source_names

    return "Record format, when detecting it from --data is not wanted: " + ", ".join(source_names()) + "."


def _check_format(value: Optional[str]) -> Optional[str]:
    if value is None:
        return value
    from medalign_rag.records.sources import source_names

    if value not in source_names():
        raise MedalignError(f"--format {value!r} is not one of {', '.join(source_names())}")
    return value


def open_data(path: Path, format: Optional[str] = None):
    """The record source at `path` (every command opens data through here)."""
    from medalign_rag.records.dataset import open_data

    return open_data(path, format=format)


def _check_patients(source, wanted: list[str]) -> list[str]:
    """`wanted` if every id is safe and in the source; else one MedalignError naming the first that is not."""
    from medalign_rag.records.model import check_patient_id

    known = None
    for patient_id in wanted:
        check_patient_id(patient_id)
        known = known if known is not None else set(source.patient_ids())
        if patient_id not in known:
            raise MedalignError(f"no patient {patient_id!r} in the data")
    return wanted


def _print_source_warnings(source) -> list[str]:
    """Counted, non-fatal problems met while reading (one line per kind), on stderr; returned for --json."""
    warnings = getattr(source, "warnings", None)
    lines = warnings.lines() if warnings else []
    for line in lines:
        console.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    return lines


def _strategy_help() -> str:
    from medalign_rag.retrieval.registry import strategy_names

    return "Retrieval strategy: " + ", ".join(strategy_names()) + "."


def _check_strategy(value: str) -> str:
    from medalign_rag.retrieval.registry import check_strategies

    check_strategies([value], field="--strategy")
    return value


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write medalign_ehr_xml/<person_id>.xml and the release's "
                             "two instruction tables into."),
    patients: int = typer.Option(20, "--patients", min=1, help="Number of synthetic patients."),
    seed: int = typer.Option(7, "--seed", help="Random seed: the same seed gives byte-identical files."),
    copy_forward: float = typer.Option(
        0.0, "--copy-forward", min=0.0, max=1.0,
        help="Share of notes that start with a copy of the patient's previous note of that kind, as real notes do."),
) -> None:
    """Write a deterministic synthetic cohort in MedAlign's release layout (numeric person ids 9900000000001, ...)."""
    from medalign_rag.datasets.synthetic import generate_cohort

    summary = generate_cohort(out, n_patients=patients, seed=seed, progress=True, copy_forward=copy_forward)
    console.print(f"wrote {patients} patients and {summary.n_instructions} instructions to {out}")


def _patient_rows(data, patient_ids, counter) -> list[dict]:
    from medalign_rag.records.serialize import render_record

    rows = []
    with progress_bar() as progress:
        task = progress.add_task("reading records", total=len(patient_ids))
        for patient_id in patient_ids:
            record = data.load_record(patient_id)
            rows.append(
                {
                    "patient_id": patient_id,
                    "encounters": len(record.encounters),
                    "events": record.n_events,
                    "notes": record.n_notes,
                    "tokens": counter.count(render_record(record, include_ids=False)),
                    "first": record.encounters[0].start.date().isoformat() if record.encounters else None,
                    "last": record.last_timestamp.date().isoformat() if record.last_timestamp else None,
                }
            )
            progress.advance(task)
    return rows


@app.command()
def inspect(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    data_format: Optional[str] = typer.Option(None, "--format", help=_format_help(), callback=_check_format),
    patient: Optional[str] = typer.Option(None, "--patient", help="Only this patient."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Per patient: encounters, events, notes and tokens (cl100k)."""
    from medalign_rag.tokenization import default_counter

    folder = open_data(data, data_format)
    patient_ids = _check_patients(folder, [patient]) if patient else folder.patient_ids()
    rows = _patient_rows(folder, patient_ids, default_counter())
    instructions = folder.instructions()
    if patient:
        instructions = [i for i in instructions if i.patient_id == patient]
    warnings = _print_source_warnings(folder)
    if as_json:
        payload = {"data": str(data), "format": getattr(folder, "format_name", None), "patients": rows,
                   "instructions": len(instructions), "warnings": warnings}
        print_json(payload)
        return
    table = Table(title=f"{data}")
    for column in ("patient_id", "encounters", "events", "notes", "tokens", "first", "last"):
        table.add_column(column, justify="right" if column in ("encounters", "events", "notes", "tokens") else "left")
    for row in rows:
        table.add_row(*(str(row[c]) for c in ("patient_id", "encounters", "events", "notes", "tokens", "first", "last")))
    stdout.print(table)
    if instructions:
        stdout.print(f"instructions: {len(instructions)}")


def _index_settings(index_dir: Optional[Path], embedding_model: Optional[str] = None):
    from medalign_rag.index.builder import IndexSettings

    settings = IndexSettings()
    if index_dir is not None:
        settings.index_dir = index_dir
    if embedding_model:
        settings.embedding_model = embedding_model
    return settings


@app.command()
def index(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    data_format: Optional[str] = typer.Option(None, "--format", help=_format_help(), callback=_check_format),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="Where indexes live (default: indexes/)."),
    patient: Optional[list[str]] = typer.Option(None, "--patient", help="Only these patients (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even unchanged patients."),
    embedding_model: Optional[str] = typer.Option(None, "--embedding-model", help="sentence-transformers name or path."),
    as_json: bool = typer.Option(False, "--json", help="Print the build report as JSON."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (a Ray cluster or Ray here)."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (auto, ray://host:10001)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=1, help="ray: encoder actors (default: one per node)."),
    num_gpus_per_worker: float = typer.Option(0.0, "--num-gpus-per-worker", min=0.0, help="ray: GPUs per actor."),
    num_cpus_per_worker: Optional[float] = typer.Option(None, "--num-cpus-per-worker", min=0.001, help="ray: CPUs per actor (default: a node's CPUs; 1 with GPUs)."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="auto (default: openvino-bf16 on CPUs with bf16 units, else openvino-fp32, else torch-fp32), torch-fp32, torch-bf16, onnx-fp32, openvino-fp32, openvino-bf16."),
) -> None:
    """Build one FAISS index per patient; unchanged patients are skipped."""
    from pydantic import ValidationError

    from medalign_rag.index.builder import IndexBuilder, IndexSettings, RaySettings

    folder = open_data(data, data_format)
    patient_ids = _check_patients(folder, list(patient)) if patient else folder.patient_ids()
    base = _index_settings(index_dir, embedding_model)
    try:
        settings = IndexSettings.model_validate({
            # GPU workers run the reference torch encoder unless told otherwise (ONNX/OpenVINO run on CPUs here)
            **base.model_dump(), "engine": engine,
            "encoder": encoder or ("torch-fp32" if num_gpus_per_worker > 0 else base.encoder),
            "ray": RaySettings(address=address, num_workers=num_workers, num_gpus_per_worker=num_gpus_per_worker,
                               num_cpus_per_worker=num_cpus_per_worker),
        })
    except ValidationError as exc:
        first = exc.errors()[0]
        raise MedalignError(f"index option {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc
    builder = IndexBuilder(settings)
    with progress_bar() as progress:
        task = progress.add_task("indexing", total=len(patient_ids))

        def advance(result) -> None:
            progress.update(task, advance=1, description=f"indexing ({result.patient_id}: {result.status})")

        report = builder.build(folder, patient_ids, force=force, on_patient=advance)
    _print_source_warnings(folder)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        for result in report.results:
            if result.status == "failed":
                console.print(f"[red]failed[/red] {result.patient_id}: {result.error}", highlight=False)
        console.print(
            f"{report.count('built')} built, {report.count('rebuilt')} rebuilt, {report.count('skipped')} skipped, "
            f"{report.count('failed')} failed in {report.seconds:.1f} s -> {builder.settings.index_dir}"
        )
    if report.count("failed"):
        raise typer.Exit(1)


def _parse_time(value: Optional[str]) -> Optional[datetime]:
    if not value:
        return None
    from medalign_rag.dates import naive_local

    try:
        return naive_local(datetime.fromisoformat(value))
    except ValueError as exc:
        raise MedalignError(f"--time-anchor {value!r} is not an ISO date/time (e.g. 2019-03-04 10:00)") from exc


@app.command()
def ask(
    instruction: str = typer.Argument(..., help="The clinician's instruction or question."),
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    data_format: Optional[str] = typer.Option(None, "--format", help=_format_help(), callback=_check_format),
    patient: str = typer.Option(..., "--patient", help="Patient id (as `inspect` lists them)."),
    strategy: str = typer.Option("temporal", "--strategy", help=_strategy_help(), callback=_check_strategy),
    budget: int = typer.Option(8192, "--budget", min=1, help="Prompt token budget (model tokens)."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="local, openai, vllm, or none (context only). Default: the config's, else local."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config for backend options."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="Where indexes live (default: indexes/)."),
    time_anchor: Optional[str] = typer.Option(None, "--time-anchor", help="Only events up to this time."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Answer one instruction about one patient (the index is built first when missing or stale)."""
    from medalign_rag.config import load_run_config, make_generator
    from medalign_rag.context import Citation, format_citation
    from medalign_rag.generation.prompt import load_prompt_template
    from medalign_rag.pipeline import AnswerRequest, Pipeline

    run = load_run_config(config) if config else None
    request = AnswerRequest(patient_id=patient, question=instruction, strategy=strategy, budget=budget,
                            time_anchor=_parse_time(time_anchor))
    folder = open_data(data, data_format)
    _check_patients(folder, [patient])
    # a flag overrides the config only when the user gave it
    backend = backend or (run.backend if run is not None else "local")
    generator = None if backend == "none" else make_generator(backend, run)
    settings = run.index if run is not None else _index_settings(None)
    if index_dir is not None:
        settings.index_dir = index_dir
    pipeline = Pipeline(
        folder, settings, generator=generator,
        prompt_template=load_prompt_template(run.prompt_template) if run is not None and run.prompt_template else None,
        reserve_tokens=run.reserve_tokens if run is not None else 256,
        max_new_tokens=run.max_new_tokens if run is not None else 256,
    )
    if not pipeline.builder.is_current(folder, patient):
        # the first question about a long record embeds all of it (tens of seconds): say so, terminal or not
        console.print(f"building index for {patient} (first question about this patient)...", highlight=False,
                      soft_wrap=True)
    with console.status(f"retrieving ({strategy}, {budget} tokens)" + ("" if generator is None else " and answering")):
        result = pipeline.answer([request])[0]
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    citations = [Citation.model_validate(c) for c in result.citations]
    # verbatim: this is the text the model saw (or would see), not a re-wrapped rendering of it
    text = result.context if result.answer is None else (result.answer.strip() or "(empty answer)")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.write(
        f"\ncontext: {result.context_tokens} tokens of {budget} ({strategy}), "
        f"{len(result.event_ids)} events from {len(citations)} encounters\ncitations:\n"
    )
    for citation in citations:
        sys.stdout.write(f"  - {format_citation(citation)}\n")


def _print_summary(rows: list[dict]) -> None:
    table = Table(title="evidence coverage (mean [95% CI]) and answer metrics")
    metrics = [m for m in ("answer_match", "rouge_l", "embedding_f1") if any(r.get(m) is not None for r in rows)]
    for column in ("strategy", "budget", "n", "evidence coverage", *metrics):
        table.add_column(column)
    for r in rows:
        coverage = "n/a" if r["evidence_coverage"] is None else (
            f"{r['evidence_coverage']:.3f} [{r['evidence_coverage_lo']:.3f}, {r['evidence_coverage_hi']:.3f}]")
        cells = [f"{r[m]:.3f}" if r.get(m) is not None else "" for m in metrics]
        table.add_row(r["strategy"], str(r["budget"]), str(r["n"]), coverage, *cells)
    stdout.print(table)


def _run_and_print(run, out_dir: Path, generator) -> None:
    from medalign_rag.evaluation.ablation import run_ablation

    outcome = run_ablation(run, out_dir, generator=generator, progress_factory=progress_bar)
    _print_summary(outcome.rows)
    for note in outcome.notes:
        console.print(f"- {note}", highlight=False)
    stdout.print(f"\nreport:  {outcome.report_md}\nsummary: {outcome.summary_csv}\n"
                 f"results: {out_dir / 'results.jsonl'}")
    for plot in outcome.plots:
        stdout.print(f"plot:    {plot}")


@app.command()
def bench(
    config: Path = typer.Option(..., "--config", help="YAML run config (see configs/)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data folder."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: runs/<config name>)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Override the config's backend (none = retrieval only)."),
    max_instructions: Optional[int] = typer.Option(None, "--max-instructions", help="Deterministic subset size."),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="Override the config's index folder."),
    data_format: Optional[str] = typer.Option(None, "--format", help="Record source format (default: detected)."),
) -> None:
    """Run an ablation (strategies x budgets); interrupt and re-run to resume."""
    from medalign_rag.config import load_run_config, make_generator

    run = load_run_config(config, {"data": data, "backend": backend, "max_instructions": max_instructions,
                                   "data_format": data_format})
    if index_dir is not None:
        run.index.index_dir = index_dir
    out_dir = out or Path("runs") / run.name
    generator = None if run.backend == "none" else make_generator(run.backend, run)
    _run_and_print(run, out_dir, generator)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the cohort, indexes and report."),
    backend: str = typer.Option("local", "--backend", help="Answering backend (local runs SmolLM2 on the CPU)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Demo run config (default: the packaged demo.yaml)."),
) -> None:
    """The main job on built-in data: synthesize a cohort, index it, run a small ablation, report."""
    from medalign_rag.config import load_run_config, make_generator
    from medalign_rag.generation.prompt import packaged_resource

    if config is None:
        name, text = packaged_resource("demo.yaml")
        run = load_run_config(Path(name), {"backend": backend}, text=text)
    else:
        run = load_run_config(config, {"backend": backend})
    run.data = out / "cohort"
    run.index.index_dir = out / "indexes"
    generator = None if run.backend == "none" else make_generator(run.backend, run)
    _run_and_print(run, out / "report", generator)
    first_patient = open_data(run.data, run.data_format).patient_ids()[0]  # an earlier demo's cohort may be reused
    stdout.print(f"try:    medalign-rag ask --data {run.data} --index-dir {run.index.index_dir} "
                 f"--patient {first_patient} \"What was the most recent hemoglobin A1c?\" --backend {backend}")


@convert_app.command("mimic-iv-demo")
def convert_mimic(
    src: Path = typer.Option(..., "--src", help="The MIMIC-IV demo folder (hosp/, icu/)."),
    meds: Optional[Path] = typer.Option(None, "--meds", help="The MEDS parquet (ICU chart events), file or folder."),
    out: Path = typer.Option(..., "--out", help="Output data folder (medalign_ehr_xml/<subject_id>.xml)."),
    tasks: Optional[Path] = typer.Option(None, "--tasks", help="Also convert FHIR-AgentBench questions (dev.csv)."),
) -> None:
    """MIMIC-IV demo -> timelines in the release layout (and, with --tasks, FHIR-AgentBench instructions)."""
    from medalign_rag.datasets.mimic_iv_demo import convert_mimic_iv_demo

    summary = convert_mimic_iv_demo(src, _meds_file(meds), out, progress=True)
    console.print(f"converted {summary.n_patients} patients to {out} "
                  f"in {summary.seconds:.1f} s", highlight=False)
    if tasks is not None:
        _convert_fhir(tasks, out, src, meds, write_records=False)


def _meds_file(meds: Optional[Path]) -> Optional[Path]:
    if meds is not None and meds.is_dir():
        found = sorted(meds.glob("*.parquet"))
        if not found:
            raise MedalignError("no .parquet file in the MEDS folder", path=meds)
        return found[0]
    return meds


def _convert_fhir(tasks: Path, data: Path, src: Path, meds: Optional[Path], write_records: bool = True) -> None:
    from medalign_rag.datasets.fhir_agentbench import convert_fhir_agentbench

    resolution = convert_fhir_agentbench(tasks, data, src, _meds_file(meds), progress=True,
                                         write_records=write_records)
    console.print(f"evidence resolution -> {data / 'evidence_resolution.json'}")
    print_json(resolution.to_json_dict())


@convert_app.command("fhir-agentbench")
def convert_fhir(
    tasks: Path = typer.Option(..., "--tasks", help="FHIR-AgentBench questions (dev.csv)."),
    data: Path = typer.Option(..., "--data", help="The converted MIMIC-IV demo folder."),
    src: Path = typer.Option(..., "--src", help="The MIMIC-IV demo folder (for evidence id mapping)."),
    meds: Optional[Path] = typer.Option(None, "--meds", help="The MEDS parquet, file or folder."),
) -> None:
    """FHIR-AgentBench questions -> instructions with gold evidence mapped to our event ids."""
    _convert_fhir(tasks, data, src, meds)


@app.command()
def serve(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    data_format: Optional[str] = typer.Option(None, "--format", help=_format_help(), callback=_check_format),
    index_dir: Optional[Path] = typer.Option(None, "--index-dir", help="Where indexes live (default: indexes/)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML run config for backend and index options."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="local, openai, vllm, or none (context and citations only). Default: the config's, "
        "else local."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; beyond loopback only with a token."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
    token: Optional[str] = typer.Option(
        None, "--token", help="Bearer token every /api request must carry (or $MEDALIGN_RAG_TOKEN).",
        show_default=False),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
    torch_threads: Optional[int] = typer.Option(
        None, "--torch-threads", min=1, help="CPU threads the embedding model (and the local model, unless its "
        "`threads` option says otherwise) uses per request. Default: torch's, one per core."),
) -> None:
    """An HTTP API and a web page: pick a patient, read the timeline, ask, click through to the cited events."""
    from medalign_rag.config import load_run_config, make_generator
    from medalign_rag.generation.prompt import load_prompt_template
    from medalign_rag.pipeline import Pipeline

    try:
        from medalign_rag.serve import check_bind, create_app, run_server
        from medalign_rag.serve.server import resolve_token
    except ImportError as error:
        raise MedalignError(f"serve needs the server extra ({error}): pip install -e '.[server]'") from None

    token = resolve_token(token)
    check_bind(host, token)  # before the models load, which takes a while
    run = load_run_config(config) if config else None
    backend = backend or (run.backend if run is not None else "local")
    source = open_data(data, data_format)
    settings = run.index if run is not None else _index_settings(None)
    if index_dir is not None:
        settings.index_dir = index_dir
    with console.status(f"loading the {backend} backend and the embedding model"):
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)  # process-wide, once, here at the entry point
        generator = None if backend == "none" else make_generator(backend, run)
        pipeline = Pipeline(
            source, settings, generator=generator,
            prompt_template=load_prompt_template(run.prompt_template) if run is not None and run.prompt_template
            else None,
            reserve_tokens=run.reserve_tokens if run is not None else 256,
            max_new_tokens=run.max_new_tokens if run is not None else 256,
        )
        pipeline.builder.embedder  # load it now, not on the first question
    run_server(create_app(pipeline, source, token=token), host=host, port=port, token=token, log_level=log_level)


@export_app.command("fhir")
def export_fhir_command(
    data: Path = typer.Option(..., "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", help="Folder for one FHIR R4 Bundle per patient (<patient_id>.json)."),
    data_format: Optional[str] = typer.Option(None, "--format", help=_format_help(), callback=_check_format),
    patient: Optional[list[str]] = typer.Option(None, "--patient", help="Only these patients (repeatable)."),
) -> None:
    """Write each patient's timeline as a FHIR R4 Bundle (resource ids = event ids)."""
    from medalign_rag.records.export_fhir import export_fhir

    source = open_data(data, data_format)
    patient_ids = _check_patients(source, list(patient)) if patient else source.patient_ids()
    with progress_bar() as progress:
        task = progress.add_task("exporting", total=len(patient_ids))
        summary = export_fhir(source, out, patient_ids, on_patient=lambda _: progress.advance(task))
    _print_source_warnings(source)
    console.print(f"wrote {summary.patients} FHIR bundles ({summary.resources} resources) to {out}")


def set_process_environment() -> None:
    """Process-wide settings, set once at the entry point before any model library is imported: records are
    PHI and machines may be offline, so no command may reach a model hub (a hub name that is not on disk is an
    error, not a download); library progress bars and warnings would bury our own output."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP's default spin-waiting stalls torch on a busy machine (benchmarks/RESULTS.md, serve: a query embedding
    # took ~1.6 s instead of ~15 ms under load); passive waiting costs nothing measurable when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cli_exception_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage/click errors, exits, aborts) for whichever click typer runs on: typer >= 0.19 vendors its own copy
    (typer._click), whose exceptions are not click's, so both are caught."""
    import click

    errors: list[type] = [click.ClickException]
    exits: list[type] = [click.exceptions.Exit, typer.Exit]
    aborts: list[type] = [click.exceptions.Abort, typer.Abort]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        errors.append(vendored.ClickException)
    return tuple(errors), tuple(exits), tuple(aborts)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main() -> None:
    from pydantic import ValidationError

    set_process_environment()
    click_errors, exits, aborts = _cli_exception_classes()
    interrupted = "interrupted: finished work is saved; run the same command again to resume"
    try:
        # standalone_mode=False: click would otherwise turn Ctrl-C into a bare "Aborted!" and swallow our errors
        code = app(standalone_mode=False)
        if code == 130:  # typer >= 0.19 turns Ctrl-C into a returned exit code 130 before we can see it
            console.print(interrupted, highlight=False)
        raise SystemExit(code if isinstance(code, int) else 0)
    except MedalignError as exc:
        if os.environ.get("MEDALIGN_DEBUG"):
            raise
        # one line, whatever a library put in the message it wraps (transformers' errors span several)
        console.print(f"[red]error:[/red] {_one_line(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(2)
    except (KeyboardInterrupt, *aborts):
        console.print(interrupted, highlight=False)
        raise SystemExit(130)
    except exits as exc:
        raise SystemExit(exc.exit_code)
    except click_errors as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command: show its help, as click would
            exc.show()
            raise SystemExit(exc.exit_code)
        # one line, like every other error: click's own show() adds the usage and a hint on lines of their own
        context = getattr(exc, "ctx", None)
        hint = f" (see: {context.command_path} --help)" if context is not None else ""
        console.print(f"[red]error:[/red] {_one_line(exc.format_message())}{hint}", highlight=False, soft_wrap=True)
        raise SystemExit(exc.exit_code)
    except ValidationError as exc:  # a request built from the arguments (AnswerRequest) names the bad field
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        console.print(f"[red]error:[/red] {field}: {first['msg']}", highlight=False, soft_wrap=True)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
