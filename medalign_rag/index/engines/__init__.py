"""Index engines: who runs a cohort's build. Every engine writes each patient through the same locked, atomic
store (index/store.py), so engines differ only in where the encoding runs.

    local   this process: patients in order, windows of several patients encoded in one length-sorted stream
    ray     a Ray cluster (or Ray on this machine): patients as a Ray Dataset, one encoder per actor
"""

from __future__ import annotations

from medalign_rag.errors import MedalignError

ENGINE_NAMES: tuple[str, ...] = ("local", "ray")


def make_engine(name: str, builder, **options):
    """An engine over `builder` (an IndexBuilder); options go to the engine (ray: address, num_workers, ...)."""
    if name == "local":
        from medalign_rag.index.engines.local import LocalEngine

        return LocalEngine(builder, **options)
    if name == "ray":
        from medalign_rag.index.engines.ray import RayEngine

        return RayEngine(builder, **options)
    raise MedalignError(f"unknown index engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
