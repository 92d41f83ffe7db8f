"""Build the demo encoder shipped in ``braindive/assets/demo-encoder`` (``python -m training.build_demo_encoder``).

Synthetic subject on S1 (``training.synthetic``) -> ``train_encoder`` with the demo's tiny tower ->
checkpoint folder, with the test R^2 against the known ceiling recorded in ``config.training``, and
``reference.npz``: the statistics of the reference images that define the simulated brain
(``training.synthetic.reference_statistics``), so the Train tab's synthetic subject needs no
2,300-image feature pass.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from braindive.demo_components import DEMO_TOWER_NAME
from braindive.encoders import load_encoder

from .eval_encoder import evaluate
from .logs import cli_errors, configure_logging
from .features import encoder_key
from .synthetic import make_synthetic, reference_statistics, save_reference_statistics
from .train_encoder import train_encoder

__all__ = ["build_demo_encoder", "main"]

log = logging.getLogger(__name__)


def build_demo_encoder(out, *, n_train: int = 2000, n_test: int = 300, seed: int = 0) -> dict:
    """Write the demo checkpoint to ``out``; returns the evaluation report."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic.h5"
        make_synthetic(data, n_train=n_train, n_test=n_test, seed=seed)
        train_encoder(data, out, backbone=DEMO_TOWER_NAME, pretrained="none", device="cpu")
        report = evaluate(out, data, Path(tmp) / "report", device="cpu")
    encoder = load_encoder(out)
    save_reference_statistics(reference_statistics(encoder), encoder_key(encoder), Path(out) / "reference.npz")
    encoder.config.training.update(
        dataset=f"synthetic S1 subject (training.synthetic, seed {seed}, {n_train} train + {n_test} test images)",
        synthetic_test={"r2_mean": report["r2"]["mean"], "ceiling_mean": report["noise_ceiling"]["mean"],
                        "r2_over_ceiling_median": report["r2_normalized"]["median"]},
    )
    encoder.save(out)
    log.info("demo encoder in %s: test R^2 mean %.3f vs ceiling mean %.3f", out, report["r2"]["mean"],
             report["noise_ceiling"]["mean"])
    return report


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m training.build_demo_encoder", description=__doc__)
    p.add_argument("--out", default="braindive/assets/demo-encoder", help="checkpoint folder")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    configure_logging()
    with cli_errors():
        return build_demo_encoder(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed)


if __name__ == "__main__":
    main()
