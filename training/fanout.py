"""Fit encoders for several subjects at once as Ray tasks (``python -m training.fanout``).

Each dataset (one subject, from ``training.prepare_*``) becomes one Ray task that calls
``training.train_encoder.train_encoder``; ``--address`` joins a cluster, otherwise a local Ray instance
sized to the machine runs them (see docs/batch.md). Workers get ``braindive`` and ``training`` through
Ray's ``runtime_env`` (``braindive.batch.cluster``). A task whose worker dies is retried by Ray; a
checkpoint folder that already holds an encoder is skipped, so re-running resumes.

    python -m training.fanout --data subj01.h5 --data subj02.h5 --out-dir encoders --gpus-per-task 1
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["FitJob", "fit_many", "main"]


@dataclass(frozen=True)
class FitJob:
    data: str  # dataset .h5
    out: str  # checkpoint folder to write
    options: dict = field(default_factory=dict)  # keyword arguments of train_encoder


def _fit(job: FitJob) -> dict:
    from .train_encoder import train_encoder

    result = train_encoder(job.data, job.out, **job.options)
    return {"path": str(result.path), "cv_r2": result.summary.get("cv_r2", {})}


def fit_many(jobs: list[FitJob], *, address: str | None = None, cpus_per_task: int = 1, gpus_per_task: float = 0,
             max_retries: int = 2, log=None) -> dict[str, dict]:
    """Fit every job whose ``out`` has no encoder yet; per ``out``: ``{"path", "cv_r2"}``, ``{"skipped"}`` or ``{"error"}``."""
    import ray
    from ray.exceptions import RayError

    import braindive
    import training
    from braindive.batch.cluster import connect

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    outs = [job.out for job in jobs]
    if len(set(outs)) != len(outs):
        raise ValueError(f"Two fit jobs write the same checkpoint folder: {sorted(o for o in outs if outs.count(o) > 1)}.")
    results, todo = {}, []
    for job in jobs:
        if not Path(job.data).is_file():
            raise FileNotFoundError(f"Dataset {job.data} not found (make it with training.prepare_nsd or prepare_generic).")
        if (Path(job.out) / "config.json").is_file():
            results[job.out] = {"skipped": "an encoder is already there"}
        else:
            todo.append(job)
    log(f"{len(todo)} encoder fit(s) to run, {len(jobs) - len(todo)} already done")
    if not todo:
        return results
    started = connect(address, modules=(braindive, training), log=log)
    try:
        task = ray.remote(_fit).options(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=max_retries)
        pending = {task.remote(job): job for job in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                results[job.out] = ray.get(ready[0])
                log(f"fit {job.data} -> {job.out}: CV R^2 median {results[job.out]['cv_r2'].get('median', float('nan')):.3f}")
            except RayError as exc:
                results[job.out] = {"error": str(exc).strip().splitlines()[-1][:300]}
                log(f"fit {job.data} failed: {results[job.out]['error']}")
    finally:
        if started:
            ray.shutdown()
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", action="append", required=True, help="dataset .h5 (repeat: one per subject)")
    p.add_argument("--out-dir", required=True, help="one checkpoint folder per dataset is written here, named by its file")
    p.add_argument("--address", help="Ray cluster to join ('auto' = the one on this node); default: a local instance")
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--gpus-per-task", type=float, default=0)
    p.add_argument("--backbone", default="ViT-B-16")
    p.add_argument("--pretrained", default="laion2b_s34b_b88k", help="OpenCLIP pretrained tag, or 'none'")
    p.add_argument("--alphas", help="ridge alphas (default: train_encoder's)")
    p.add_argument("--cv", type=int, default=5)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    stems = [Path(d).stem for d in args.data]
    if len(set(stems)) != len(stems):
        print(f"error: --data files must have distinct names (they name the checkpoints), got {stems}", file=sys.stderr)
        return 2
    options = {"backbone": args.backbone, "pretrained": args.pretrained,
               "cv": args.cv, "device": "auto", **({"alphas": args.alphas} if args.alphas else {})}
    jobs = [FitJob(d, str(Path(args.out_dir) / s), options) for d, s in zip(args.data, stems)]
    try:
        results = fit_many(jobs, address=args.address, cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [out for out, r in results.items() if "error" in r]
    print(f"{len(results) - len(failed)} of {len(results)} encoders ready in {args.out_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
