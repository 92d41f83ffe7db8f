"""Run a sweep on Ray: one actor per GPU (or per ``cpus_per_worker`` CPUs), the driver writes the catalog.

Why the driver writes: workers may run on other machines without the catalog's disk, and SQLite's WAL
needs every writer on one host; results are small (a PNG, a record, one activation vector per image),
so returning them through Ray's object store costs little and leaves one writer. Exactly once: every
image has a deterministic id; the driver skips ids already in the catalog, and ``Catalog.add`` ignores
an id it holds, so a unit that Ray retries after a worker dies, or a re-run after a crash, Ctrl-C or a
full disk, never duplicates an image, and an image is indexed only once its files are complete.

Unguided baselines depend on the seed, encoder and settings, not on the target: a first stage makes each
missing one once (``BatchWorker.unguided``) and the catalog stores it; every unit then gets its seeds'
baselines with it, so a 5-region sweep runs one unguided image per seed, not five.
"""
from __future__ import annotations

import errno
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ..catalog import Catalog
from ..generate import baseline_key
from .cluster import connect
from .sweep import Sweep, model_name
from .worker import BatchWorker, Faults, ImageOut, Unit

__all__ = ["run_sweep", "RunReport", "WorkerPool", "plan_units", "connect"]

_IN_FLIGHT = 2  # units queued per actor, so it never waits for the driver


@dataclass
class RunReport:
    run_id: str
    total: int
    existing: int  # already in the catalog before this run
    added: int = 0
    failed: list[str] = field(default_factory=list)  # messages of units that failed after Ray's retries
    stopped: str | None = None  # why the run stopped early ("Ctrl-C", "disk full"), None if it ran to the end
    seconds: float = 0.0
    workers: int = 0
    summary: Path | None = None
    package: Path | None = None  # the [stimuli] package, when the sweep has one


def plan_units(sweep: Sweep, catalog: Catalog) -> tuple[list[Unit], int]:
    """Units of at most ``batch_size`` seeds holding only images not yet in ``catalog``; and how many are."""
    units, existing = [], 0
    for job in sweep.jobs:
        todo = [(seed, i) for seed, i in zip(sweep.seeds, sweep.image_ids(job)) if catalog.find(i) is None]
        existing += len(sweep.seeds) - len(todo)
        for start in range(0, len(todo), sweep.batch_size):
            chunk = todo[start:start + sweep.batch_size]
            units.append(Unit(job, tuple(s for s, _ in chunk), tuple(i for _, i in chunk)))
    return units, existing


class WorkerPool:
    """Ray actors that each load the pipeline once; one per GPU, or per ``cpus_per_worker`` CPUs without GPUs.

    Reusable across sweeps of the same model (``run_sweep(..., pool=)``); ``close()`` ends the actors.
    An actor that dies is restarted by Ray up to ``max_retries`` times, and its queued units rerun.
    """

    def __init__(self, model: str, workers: int = 0, *, cpus_per_worker: int = 1, gpus_per_worker: float | None = None,
                 max_retries: int = 3):
        import ray

        from ..cache import cache_dir

        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        per_gpu = gpus_per_worker if gpus_per_worker is not None else (1 if gpus else 0)
        fit = int(gpus // per_gpu) if per_gpu else int(resources.get("CPU", 1) // cpus_per_worker)
        if fit < 1:
            raise ValueError(f"The Ray cluster has {resources.get('CPU', 0):g} CPUs and {gpus:g} GPUs: not enough for "
                             f"one worker of {cpus_per_worker} CPU(s) and {per_gpu:g} GPU(s).")
        self.model, self.num_cpus, self.num_gpus = model, cpus_per_worker, per_gpu
        actor_class = ray.remote(_Actor).options(num_cpus=cpus_per_worker, num_gpus=per_gpu, max_restarts=max_retries,
                                                 max_task_retries=max_retries)
        self.actors = [actor_class.remote(model, str(cache_dir()), "auto", cpus_per_worker)
                       for _ in range(min(workers, fit) if workers else fit)]

    @classmethod
    def for_sweep(cls, sweep: Sweep, n_units: int, workers: int | None = None) -> "WorkerPool":
        wanted = workers or sweep.workers or n_units
        return cls(sweep.model, min(wanted, n_units), cpus_per_worker=sweep.cpus_per_worker,
                   gpus_per_worker=sweep.gpus_per_worker, max_retries=sweep.max_retries)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def run_sweep(sweep: Sweep, *, catalog_dir=None, address: str | None = None, workers: int | None = None,
              pool: WorkerPool | None = None, faults: Faults = Faults(), on_unit=None, log=None) -> RunReport:
    """Generate every image of ``sweep`` missing from the catalog, then write the summary.

    Without ``pool`` a pool sized to the resources (at most ``workers``) is made and closed at the end.
    ``on_unit(report, actors)`` is called after each finished unit.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    catalog = Catalog(catalog_dir or sweep.catalog)
    units, existing = plan_units(sweep, catalog)
    report = RunReport(sweep.run_id, sweep.n_images, existing)
    log(f"run {sweep.run_id}: {sweep.n_images} images ({len(sweep.jobs)} jobs x {len(sweep.seeds)} seeds), "
        f"{existing} already in {catalog.root}, {sum(len(u.seeds) for u in units)} to make in {len(units)} units")
    if units:
        started = connect(address, log=log)
        own = pool is None
        try:
            pool = pool or WorkerPool.for_sweep(sweep, len(units), workers)
            if sweep.baseline:
                _make_baselines(sweep, units, catalog, report, pool, log)
            if not report.stopped:
                _execute(sweep, units, catalog, report, pool, faults, on_unit, log)
        finally:
            if own and pool is not None:
                pool.close()
            if started:
                import ray

                ray.shutdown()
        if report.stopped:
            log(f"stopped: {report.stopped}. {report.existing + report.added} of {report.total} images are in the "
                "catalog, each complete; run the same command again to resume.")
    from .summary import write_summary

    report.summary = write_summary(sweep, catalog, log=log)
    if sweep.stimuli is not None and not report.stopped:
        from ..stimuli.sweep import package_run

        report.package = package_run(sweep, catalog, log=log)
    return report


def _baseline_keys(sweep: Sweep, unit: Unit) -> dict[int, str]:
    job = unit.job
    return {s: baseline_key(model_name(sweep.model), job.settings, s, job.encoder.identity, job.target_key["subject_space"])
            for s in unit.seeds}


def _make_baselines(sweep, units, catalog, report, pool, log) -> None:
    """Stage 1: each unguided image the units need and the catalog lacks, made once (one unit per seed batch)."""
    todo = {}
    for unit in units:
        for seed, key in _baseline_keys(sweep, unit).items():
            if key not in todo and catalog.get_baseline(key) is None:
                todo[key] = (unit.job, seed)
    groups = {}
    for key, (job, seed) in todo.items():  # one encoder + settings: seeds batched together
        groups.setdefault((job.encoder.identity, job.settings), (job, []))[1].append(seed)
    tasks = [Unit(job, tuple(seeds[i:i + sweep.batch_size]), ())
             for job, seeds in groups.values() for i in range(0, len(seeds), sweep.batch_size)]
    if not tasks:
        return
    log(f"unguided baselines: {len(todo)} to make (one per seed, shared by every target)")

    def store(unit, baselines):
        for out in baselines:
            catalog.put_baseline(out.key, Image.open(BytesIO(out.png)), out.activations)
        return len(baselines)

    _dispatch(tasks, pool, report, lambda actor, unit: actor.unguided.remote(unit.job, unit.seeds), store, log)


def _with_baselines(sweep: Sweep, unit: Unit, catalog: Catalog) -> Unit:
    """The unit carrying its seeds' stored baselines (PNG bytes + activations)."""
    found = {}
    for key in _baseline_keys(sweep, unit).values():
        png, npy = catalog.baseline_paths(key)
        if png.is_file() and npy.is_file():
            found[key] = (png.read_bytes(), np.load(npy, allow_pickle=False))
    return replace(unit, baselines=found)


def _execute(sweep, units, catalog, report, pool, faults, on_unit, log) -> None:
    done = _existing_per_job(sweep, units)
    t0 = time.perf_counter()

    def submit(actor, unit):
        unit = _with_baselines(sweep, unit, catalog) if sweep.baseline else unit
        return actor.run.remote(unit, sweep.save_activations, sweep.baseline, faults)

    def handle(unit, images):
        _store(catalog, images, sweep.run_id, report)
        done[unit.job.label] += len(images)
        _progress(sweep, report, done, unit, time.perf_counter() - t0, log)

    _dispatch(units, pool, report, submit, handle, log, on_unit)


def _dispatch(units, pool, report, submit, handle, log, on_unit=None) -> None:
    """Run ``units`` on the pool's actors (``submit(actor, unit)`` -> Ray ref), ``handle(unit, result)`` each."""
    import ray
    from ray.exceptions import RayActorError, RayError

    t0 = time.perf_counter()
    actors = list(pool.actors)
    report.workers = len(actors)
    log(f"{len(actors)} worker(s), each {pool.num_gpus:g} GPU + {pool.num_cpus} CPU")
    queue, pending = list(reversed(units)), {}

    def feed(actor):
        while queue and sum(a is actor for a, _ in pending.values()) < _IN_FLIGHT:
            unit = queue.pop()
            pending[submit(actor, unit)] = (actor, unit)

    try:
        for actor in actors:
            feed(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, unit = pending.pop(ready[0])
            try:
                images = ray.get(ready[0])
            except RayError as exc:  # failed after Ray's retries: the unit stays missing, a re-run makes it
                report.failed.append(f"{unit.job.label} seeds {unit.seeds[0]}..{unit.seeds[-1]}: {_first_line(exc)}")
                log(f"unit failed: {report.failed[-1]}")
                if isinstance(exc, RayActorError):  # the actor is gone for good (Ray's restarts used up)
                    actors.remove(actor)
                    _requeue_from(actor, pending, queue)
                    if not actors:
                        raise RuntimeError("every worker died; re-run the sweep to resume") from exc
                for a in actors:
                    feed(a)
                continue
            handle(unit, images)
            if on_unit is not None:
                on_unit(report, actors)
            feed(actor)
    except KeyboardInterrupt:
        report.stopped = "Ctrl-C"
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        report.stopped = f"disk full ({exc.strerror})"
    finally:
        report.seconds += time.perf_counter() - t0
        for ref in pending:  # queued units of a stopped run: dropped, a re-run makes them
            ray.cancel(ref)


class _Actor(BatchWorker):
    """The Ray actor: a ``BatchWorker`` that loads its pipeline when it starts."""

    def __init__(self, model, cache_root, device, threads):
        super().__init__(model, cache_root, device, threads)
        self.warm_up()


def _store(catalog: Catalog, images: list[ImageOut], run_id: str, report: RunReport) -> None:
    for out in images:
        if out.baseline is not None and catalog.get_baseline(out.baseline.key) is None:
            catalog.put_baseline(out.baseline.key, Image.open(BytesIO(out.baseline.png)), out.baseline.activations)
        before = catalog.find(out.id)
        if before is None:
            catalog.add(Image.open(BytesIO(out.png)), out.record, run_id=run_id, activations=out.activations,
                        entry_id=out.id)
            report.added += 1


def _existing_per_job(sweep: Sweep, units: list[Unit]) -> Counter:
    missing = Counter()
    for unit in units:
        missing[unit.job.label] += len(unit.seeds)
    return Counter({job.label: len(sweep.seeds) - missing[job.label] for job in sweep.jobs})


def _progress(sweep, report, done, unit, seconds, log) -> None:
    n = len(sweep.seeds)
    overall = report.existing + report.added
    rate = report.added / seconds if seconds > 0 else math.nan
    eta = (report.total - overall) / rate if rate > 0 else math.nan
    log(f"[{unit.job.label} {done[unit.job.label]}/{n}] overall {overall}/{report.total} "
        f"({100 * overall / report.total:.0f}%), {rate:.2f} images/s, about {eta / 60:.1f} min left")


def _requeue_from(actor, pending: dict, queue: list) -> None:
    for ref, (a, unit) in list(pending.items()):
        if a is actor:
            del pending[ref]
            queue.append(unit)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:300]
