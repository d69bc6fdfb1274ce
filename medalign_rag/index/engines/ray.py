"""The Ray engine: a cohort's patients as a Ray Dataset, built by a pool of actors that each hold one encoder.

    medalign-rag index --data DIR --engine ray                       # Ray on this machine
    medalign-rag index --data DIR --engine ray --address auto --num-workers 16 --num-gpus-per-worker 1

Every actor runs the local engine's steps (prepare, encode its batch of patients in one stream, commit under the
patient's lock through the atomic store), so a worker killed mid-write leaves the old index or none, never half of
one; Ray restarts the actor and retries its batch, and a re-run skips every patient already finished. The index
folder (and the data source) must be reachable under the same path from every node: a shared filesystem.
"""

from __future__ import annotations

import time
from typing import Callable

from medalign_rag.errors import MedalignError

DEFAULT_PATIENTS_PER_TASK = 4


class IndexWorker:
    """One Ray actor: one IndexBuilder (one loaded encoder) that builds the patient batches it is handed."""

    def __init__(self, settings_json: str, source, force: bool, gpus: float) -> None:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from medalign_rag.index.builder import IndexBuilder, IndexSettings

        settings = IndexSettings.model_validate_json(settings_json)
        self.builder = IndexBuilder(settings, device="cuda" if gpus > 0 else "cpu")
        self.source = source
        self.force = force

    def __call__(self, batch: dict) -> dict:
        from medalign_rag.index.engines.local import build_patients

        results = build_patients(self.builder, self.source, [str(p) for p in batch["patient_id"]],
                                 force=self.force, keep_going=True)
        return {
            "patient_id": [r.patient_id for r in results],
            "result_json": [r.model_dump_json() for r in results],
        }


def _largest_first(source, patient_ids: list[str]) -> list[str]:
    """Patients by record size, largest first, where the source keeps one file per record. Ray hands the next task
    to whichever actor is free, so big records start first and small ones fill the gaps (longest processing time
    first); in the given order two big records could share one actor while the other idles."""
    record_path = getattr(source, "record_path", None)
    if record_path is None:
        return list(patient_ids)

    def size(patient_id: str) -> int:
        try:
            return record_path(patient_id).stat().st_size
        except (OSError, MedalignError):
            return 0

    return sorted(patient_ids, key=size, reverse=True)


def actor_layout(node_cpus: list[float], num_workers: int | None, cpus_per_worker: float | None,
                 gpus_per_worker: float) -> tuple[int, float]:
    """(actors, CPUs per actor). By default one actor per node holding the node's cores, so each node runs one
    length-sorted encode stream on all its cores as the local engine does; single-thread actors per core were 1.7x
    slower on a 2-core machine (bf16 on AMX), and each actor also loads its own model."""
    nodes = [cpus for cpus in node_cpus if cpus > 0] or [1.0]
    total = sum(nodes)
    if cpus_per_worker is None:
        if gpus_per_worker > 0:
            cpus_per_worker = 1.0
        elif num_workers is None:
            cpus_per_worker = min(nodes)
        else:
            cpus_per_worker = max(1.0, float(int(total // num_workers)))
    if num_workers is None:
        num_workers = max(1, int(sum(cpus // cpus_per_worker for cpus in nodes)))
    return num_workers, cpus_per_worker


class RayEngine:
    """Builds on Ray; `address=None` starts (or joins) Ray on this machine."""

    name = "ray"

    def __init__(self, builder, *, address: str | None = None, num_workers: int | None = None,
                 num_gpus_per_worker: float = 0.0, num_cpus_per_worker: float | None = None,
                 patients_per_task: int = DEFAULT_PATIENTS_PER_TASK, init_options: dict | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise MedalignError("the ray engine needs Ray: pip install 'medalign-rag[ray]'") from exc
        if num_workers is not None and num_workers < 1:
            raise MedalignError(f"--num-workers must be at least 1, not {num_workers}")
        if num_gpus_per_worker < 0:
            raise MedalignError(f"--num-gpus-per-worker must not be negative, not {num_gpus_per_worker}")
        if num_gpus_per_worker > 0 and not builder.settings.encoder.startswith("torch-"):
            raise MedalignError(f"encoder {builder.settings.encoder} runs on CPUs only: GPU workers need "
                                f"--encoder torch-fp32 (or torch-bf16)")
        self.builder = builder
        self.address = address
        self.num_workers = num_workers
        self.num_gpus_per_worker = num_gpus_per_worker
        self.num_cpus_per_worker = num_cpus_per_worker
        self.patients_per_task = max(1, patients_per_task)
        self.init_options = init_options or {}

    def _ensure_ray(self):
        import ray

        if not ray.is_initialized():
            options = {"log_to_driver": False, "include_dashboard": False, **self.init_options}
            if self.address:
                options["address"] = self.address
            ray.init(**options)
        return ray

    def build(self, source, patient_ids: list[str] | None = None, *, force: bool = False,
              on_patient: Callable | None = None, keep_going: bool = True):
        from medalign_rag.index.builder import BuildReport, PatientBuildResult
        from medalign_rag.index.engines.local import _current_result
        from medalign_rag.index.store import cleanup_stale_builds

        started = time.perf_counter()
        builder = self.builder
        cleanup_stale_builds(builder.settings.index_dir)
        ids = list(patient_ids) if patient_ids is not None else source.patient_ids()
        results: dict[str, PatientBuildResult] = {}
        pending: list[str] = []
        for patient_id in ids:  # the driver skips finished patients without starting anything
            try:
                done = None if force else _current_result(builder, patient_id,
                                                          builder.source_fingerprint(source, patient_id))
            except MedalignError as exc:
                if not keep_going:
                    raise
                done = PatientBuildResult(patient_id=patient_id, status="failed", error=str(exc))
            if done is None:
                pending.append(patient_id)
            else:
                results[patient_id] = done
                if on_patient:
                    on_patient(done)
        if pending:
            ray = self._ensure_ray()
            node_cpus = [float(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")]
            workers, cpus_per_worker = actor_layout(node_cpus, self.num_workers, self.num_cpus_per_worker,
                                                    self.num_gpus_per_worker)
            workers = min(workers, len(pending))
            # Small cohorts go one patient per task so no actor idles while another works through a batch of big
            # records; a cohort of many patients keeps batches (fewer round trips) of up to `patients_per_task`.
            per_task = max(1, min(self.patients_per_task, len(pending) // (workers * 4)))
            pending = _largest_first(source, pending)
            dataset = ray.data.from_items([{"patient_id": p} for p in pending],
                                          override_num_blocks=max(1, -(-len(pending) // per_task)))
            built = dataset.map_batches(
                IndexWorker,
                fn_constructor_kwargs={"settings_json": builder.settings.model_dump_json(), "source": source,
                                       "force": force, "gpus": self.num_gpus_per_worker},
                batch_size=per_task,
                # one task at a time per actor: a queued task waits for the actor it was sent to, so with several in
                # flight a big record can queue behind another while a second actor idles
                compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
                num_cpus=cpus_per_worker,
                num_gpus=self.num_gpus_per_worker or None,
                batch_format="numpy",
            )
            for row in built.iter_rows():
                result = PatientBuildResult.model_validate_json(row["result_json"])
                results[result.patient_id] = result
                if on_patient:
                    on_patient(result)
        cleanup_stale_builds(builder.settings.index_dir)  # staging folders of a worker killed mid-write
        ordered = [results[p] for p in ids if p in results]
        if not keep_going:
            failed = next((r for r in ordered if r.status == "failed"), None)
            if failed is not None:
                raise MedalignError(f"patient {failed.patient_id}: {failed.error}")
        return BuildReport(results=ordered, seconds=time.perf_counter() - started)
