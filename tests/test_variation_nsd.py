"""A prepared NSD dataset as a source of images: a variation's start image (by its 0-based 73k id) and the
shared images a split by response profile predicts for; read against the release's own ``nsd_stimuli.hdf5``,
through the library and the app's panels."""
import h5py
import numpy as np
import PIL.Image
import pytest
from nsd_fixture import make_nsd_tree

from braindive.prepared import nsd_image
from braindive.variation import image_hash
from service_support import demo_service
from training import prepare_nsd
from training_support import one_torch_thread  # noqa: F401  (autouse)
from ui import subregions as panels
from ui.service import ServiceError


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_nsd_tree(tmp_path_factory.mktemp("nsd"), n_sessions=3)


@pytest.fixture(scope="module")
def service(release, tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    prepared = prepare_nsd.prepare_nsd(release.root, "subj01", data / "nsd", sessions=3, image_size=0,
                                       betas_format="nifti")
    service = demo_service(data)
    service.backend().defaults["num_inference_steps"] = 3
    service.prepared = prepared.dataset
    return service


def _brick(release, nsd_id: int) -> np.ndarray:
    with h5py.File(release.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5", "r") as f:
        return f["imgBrick"][nsd_id]


def test_nsd_image_is_the_release_image_of_that_73k_id(release, service):
    for nsd_id in (int(release.trial_images[0]), int(release.shared_ids[-1])):
        np.testing.assert_array_equal(np.asarray(nsd_image(service.prepared, nsd_id)), _brick(release, nsd_id))
    shown = set(release.trial_images.tolist())
    one_based = next(i + 1 for i in sorted(shown) if i + 1 not in shown)
    with pytest.raises(ValueError, match=rf"NSD image {one_based} is not in .*; {one_based - 1} is \(a 1-based id"):
        nsd_image(service.prepared, one_based)
    with pytest.raises(ValueError, match="an integer from 0 to 72999, got 73000"):
        nsd_image(service.prepared, 73000)
    with pytest.raises(FileNotFoundError, match="NSD dataset file not found"):
        nsd_image(service.prepared.with_name("missing.h5"), 1)


def test_start_from_an_nsd_image_in_the_app(release, service):
    subject = service.subject_names()[0]
    encoder = service.encoders_for(subject)[0]
    nsd_id = int(release.shared_ids[0])
    dataset = str(service.prepared)
    ref, control, guided, text = panels.vary(service, subject, encoder, "PPA", "minimize", None, 0.6, 20.0, 1, "fast",
                                             owner="nsd", nsd_dataset=dataset, nsd_id=nsd_id)
    expected = PIL.Image.fromarray(_brick(release, nsd_id))
    (entry,) = service.catalog.query(owner="nsd")
    record = service.catalog.record(entry.id)
    assert record["parameters"]["reference"] == {"file": f"nsd-{nsd_id}", "sha256": image_hash(expected)}
    assert record["parameters"]["strength"] == 0.6 and record["label"] == "min PPA"
    upload = PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ServiceError, match="not both"):
        panels.vary(service, subject, encoder, "PPA", "minimize", upload, 0.6, 20.0, 1, "fast", nsd_dataset=dataset,
                    nsd_id=nsd_id)
    with pytest.raises(ServiceError, match="upload one, or give an NSD image id"):
        panels.vary(service, subject, encoder, "PPA", "minimize", None, 0.6, 20.0, 1, "fast")
    # a dataset outside the app's folders gets the same refusal as a path that does not exist
    outside = release.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
    for path in (str(outside), "/no/such/file.h5"):
        with pytest.raises(ServiceError, match="is not available to the app") as refused:
            panels.vary(service, subject, encoder, "PPA", "minimize", None, 0.6, 20.0, 1, "fast", nsd_dataset=path,
                        nsd_id=nsd_id)
        assert str(refused.value).startswith(f"Dataset '{path}'")
    with pytest.raises(ServiceError, match=r"NSD image 72999 is not in subj01"):
        panels.vary(service, subject, encoder, "PPA", "minimize", None, 0.6, 20.0, 1, "fast", nsd_dataset=dataset,
                    nsd_id=72999)


def test_split_by_responses_reads_only_folders_the_app_may_read(service, release):
    subject = service.subject_names()[0]
    encoder = service.encoders_for(subject)[0]
    for folder in (str(release.root), "/etc", "relative/missing"):
        with pytest.raises(ServiceError, match="Image folder .* is not available to the app"):
            panels.split(service, subject, encoder, "OPA", 2, "response profile (predicted for images)",
                         "posterior-anterior", folder)


def test_split_by_responses_to_the_shared_nsd_images(service, release):
    """The shared images are the dataset's test split; the split equals k-means on responses to them, computed here
    from the release's own image brick."""
    import torch

    from braindive import subregions as sr

    subject = service.subject_names()[0]
    encoder_name = service.encoders_for(subject)[0]
    encoder = service.encoder(encoder_name)
    parts, rows = panels.split(service, subject, encoder_name, "PPA", 2, "response profile (predicted for images)",
                               "posterior-anterior", str(service.prepared))
    with h5py.File(service.prepared, "r") as f:
        shared = f["images/ids"][()][f["test/image_index"][()]]
    assert sorted(shared.tolist()) == sorted(release.shared_ids.tolist())
    pixels = np.stack([np.asarray(PIL.Image.fromarray(_brick(release, int(i))).resize((224, 224)), np.float32) / 255
                       for i in shared])
    expected = sr.split_region(service.subject(subject), "PPA", 2, "responses", encoder=encoder,
                               images=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert [p.voxels.tolist() for p in parts.parts] == [p.voxels.tolist() for p in expected.parts]
    assert [r["n_voxels"] for r in rows] == [len(p.voxels) for p in expected.parts]


def test_cli_and_sweep_start_from_the_same_nsd_image_with_the_same_ids(release, service, tmp_path, capsys):
    from braindive.batch import SweepError, parse_sweep
    from braindive.catalog import Catalog
    from braindive.cli import main

    nsd_id = int(release.shared_ids[1])
    expected = {"file": f"nsd-{nsd_id}", "sha256": image_hash(PIL.Image.fromarray(_brick(release, nsd_id)))}
    flags = ["--roi", "FFA", "--n", "1", "--seed", "4", "--steps", "2", "--height", "64", "--width", "64",
             "--strength", "0.5"]
    assert main(["generate", *flags, "--init-image", f"nsd:{nsd_id}", "--nsd-dataset", str(service.prepared),
                 "--out", str(tmp_path / "cli")]) == 0
    cli = Catalog(tmp_path / "cli")
    (entry,) = cli.query()
    assert cli.record(entry.id)["parameters"]["reference"] == expected

    sweep_text = f"""
name = "nsd-start"
model = "demo"
seeds = [4]
[[encoders]]
subject = "S1"
path = "demo"
[targets]
rois = ["FFA"]
[settings]
steps = 2
height = 64
width = 64
init_images = ["nsd:{nsd_id}"]
strength = 0.5
nsd_dataset = "{service.prepared.name}"
"""
    sweep = parse_sweep(sweep_text, base_dir=service.prepared.parent)  # the dataset relative to the sweep file
    (job,) = sweep.jobs
    assert job.settings.image_record() == {"strength": 0.5, "reference": expected}
    assert sweep.image_ids(job) == [entry.id]  # the same request, the same image id at both doors
    with pytest.raises(SweepError, match="names an NSD image: give the prepared NSD dataset"):
        parse_sweep(sweep_text.replace(f'nsd_dataset = "{service.prepared.name}"', ""), base_dir=service.prepared.parent)
    with pytest.raises(SweepError, match="NSD dataset file not found"):
        parse_sweep(sweep_text, base_dir=tmp_path)
    assert main(["generate", *flags, "--init-image", f"nsd:{nsd_id}", "--out", str(tmp_path / "x")]) == 2
    assert "names an NSD image" in capsys.readouterr().err
    assert main(["generate", "--roi", "FFA", "--nsd-dataset", str(service.prepared), "--out", str(tmp_path / "y")]) == 2
    assert "--nsd-dataset needs --init-image nsd:<id>" in capsys.readouterr().err
