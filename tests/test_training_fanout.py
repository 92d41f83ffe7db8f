"""Encoder fitting for several subjects as Ray tasks (training.fanout) on the session's local Ray instance."""
import numpy as np
import pytest
from safetensors.numpy import load_file

from training import train_encoder
from training.fanout import FitJob, fit_many, main
from training.synthetic import make_synthetic

OPTIONS = {"backbone": "braindive-tiny-vit", "pretrained": "none", "alphas": "1,10,100", "cv": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def datasets(s1, tmp_path_factory):
    root = tmp_path_factory.mktemp("fanout")
    for seed in (1, 2):
        make_synthetic(root / f"sub{seed}.h5", s1, n_train=120, n_test=20, seed=seed, image_size=32)
    return root


def head(folder):
    return load_file(folder / "head.safetensors")["weight"]


def test_fits_one_encoder_per_subject_as_ray_tasks_and_resumes(local_ray, datasets):
    jobs = [FitJob(str(datasets / f"sub{s}.h5"), str(datasets / "enc" / f"sub{s}"), OPTIONS) for s in (1, 2)]
    results = fit_many(jobs, log=lambda m: None)
    assert all("path" in r for r in results.values()), results
    # the same fit in this process, for sub2: the Ray task's checkpoint must hold the same weights
    direct = train_encoder.train_encoder(datasets / "sub2.h5", datasets / "direct", **OPTIONS)
    np.testing.assert_allclose(head(datasets / "enc" / "sub2"), head(direct.path), atol=1e-5)
    assert not np.allclose(head(datasets / "enc" / "sub1"), head(datasets / "enc" / "sub2"), atol=1e-3)
    again = fit_many(jobs, log=lambda m: None)
    assert all("skipped" in r for r in again.values())


def test_cli_rejects_missing_data_and_clashing_names(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope.h5"), "--out-dir", str(tmp_path)]) == 2
    assert "nope.h5 not found" in capsys.readouterr().err
    assert main(["--data", "a/x.h5", "--data", "b/x.h5", "--out-dir", str(tmp_path)]) == 2
    assert "distinct names" in capsys.readouterr().err
