"""Issue 22 without a browser: the built-in volume demo encoder, volume voxels named by grid position, NIfTI maps,
previews of the unguided stage, Train's stages, History's dates and thumbnails, the evaluation panel."""
import sys
from pathlib import Path

import gradio as gr
import nibabel as nib
import numpy as np
import pytest
import torch

import braindive as bd
from braindive.evaluation.sets import generated_sets
from braindive.evaluation.zeroshot import ZeroShotConfig, weights_unavailable
from service_support import demo_service
from ui import activation as act
from ui import evaluate, history
from ui.jobs import JobState, TrainingJob
from ui.registry import DEMO_VOLUME_ENCODER
from ui.service import CUSTOM, GenerationRequest, ImageResult, Progress, ServiceError
from ui.train import overall_percent, progress_text

VOLUME = "S1-fullhead"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("roughedges"))


@pytest.fixture(scope="module")
def volume():
    return bd.load_subject(VOLUME)


def test_the_volume_subject_and_its_demo_encoder_are_built_in(service, volume, s1):
    """22.2: S1-fullhead is listed with no set-up; its encoder is the S1 demo encoder resampled onto its voxels."""
    assert volume.label in service.subject_names()
    assert service.encoders_for(volume.label) == [DEMO_VOLUME_ENCODER]
    encoder = service.encoder(DEMO_VOLUME_ENCODER)
    encoder.check_subject(volume)
    expected = bd.demo.resampled_encoder(bd.load_encoder(bd.demo.ASSET_ENCODER, subject=s1), s1, volume)
    torch.testing.assert_close(encoder.head.weight, expected.head.weight)
    torch.testing.assert_close(encoder.head.bias, expected.head.bias)
    # a trained encoder of the same name does not hide the built-in one
    (service.settings.models_dir / DEMO_VOLUME_ENCODER).mkdir(parents=True)
    (service.settings.models_dir / DEMO_VOLUME_ENCODER / "config.json").write_text("{}")
    assert service.encoder_names().count(DEMO_VOLUME_ENCODER) == 1


def test_train_offers_a_synthetic_s1_fullhead(service):
    """22.2: the Train tab's synthetic subject can be S1-fullhead; another name is refused, naming the field."""
    launcher = service.training
    job = launcher._job("synthetic", None, "vol", 100, 100, "braindive-tiny-vit", "none", 2, VOLUME)
    argv = job.commands[0][1]
    assert argv[argv.index("--subject") + 1] == VOLUME and "S1-fullhead" in job.state.title
    with pytest.raises(ServiceError, match="`subject` of a synthetic dataset must be one of"):
        launcher.start("synthetic", name="x", subject="subj99")


def test_a_volume_click_names_the_voxels_grid_position_and_coordinates(service, volume):
    """22.16: i, j, k from the subject's grid, x, y, z through its affine (nibabel's apply_affine)."""
    guided = np.arange(volume.n_voxels, dtype=np.float64)
    maps = act.ResultMaps("e0", {"seed": 0, "target": "FFA", "subject": VOLUME, "objective": {}}, guided, None,
                          Path("e0.png"), None)
    x, y = bd.roi_centroids(volume, view="voxels")["FFA.rh"]
    text = act.values_at(service, volume.label, maps, x, y)
    voxel = bd.pick(volume, x, y, service.flatmap_shape(volume.label), view="voxels").voxel
    i, j, k = volume.ijk[voxel]
    xyz = nib.affines.apply_affine(volume.affine, [i, j, k])
    assert f"(i, j, k) = ({i}, {j}, {k})" in text
    assert f"(x, y, z) = ({xyz[0]:.1f}, {xyz[1]:.1f}, {xyz[2]:.1f}) mm" in text
    assert "(i, j, k)" not in act.voxel_name(service.subject("S1"), 0)


def test_volume_maps_export_as_nifti_on_the_subjects_grid(volume, tmp_path):
    """22.16: one NIfTI per map with the grid's shape and affine, the value of voxel v at its (i, j, k), NaN elsewhere."""
    rng = np.random.default_rng(1)
    guided, unguided = rng.normal(size=volume.n_voxels), rng.normal(size=volume.n_voxels)
    maps = act.ResultMaps("e0", {"seed": 0, "subject": VOLUME}, guided, unguided, Path("e0.png"), None)
    paths = [Path(p) for p in act.export_maps(maps, volume, tmp_path)]
    niftis = {p.name.split("e0_")[-1]: p for p in paths if p.name.endswith(".nii.gz")}
    assert sorted(niftis) == ["guided.nii.gz", "guided_minus_unguided.nii.gz", "unguided.nii.gz"]
    assert not [p for p in paths if p.name.endswith(".gii")]
    image = nib.load(niftis["guided_minus_unguided.nii.gz"])
    data = np.asarray(image.dataobj)
    assert data.shape == tuple(volume.volume_shape) and np.allclose(image.affine, volume.affine)
    for v in (0, volume.n_voxels // 2, volume.n_voxels - 1):
        assert data[tuple(volume.ijk[v])] == pytest.approx(guided[v] - unguided[v], rel=1e-6)
    assert np.isnan(data).sum() == data.size - volume.n_voxels
    assert act.map_formats(volume) == ".npy, NIfTI" and act.map_formats(bd.load_subject("S1")) == ".npy, GIfTI"


def test_the_unguided_stage_streams_previews(service):
    """22.12: every step of the unguided comparison has a preview, and they change."""
    items = list(service.generate(GenerationRequest(steps=4, seed=1, target="FFA")))
    unguided = [i for i in items if isinstance(i, Progress) and i.stage == "unguided comparison"]
    assert len(unguided) >= 4 and all(p.preview is not None for p in unguided)
    assert len({np.asarray(p.preview).tobytes() for p in unguided}) == len(unguided)
    assert isinstance(items[-2], ImageResult)


def test_train_progress_counts_finished_stages_and_says_100_only_when_done():
    """22.13: 0, 33, 66 % as stages start; 100 % only once the job is done (not when evaluation's bar ends)."""
    assert [overall_percent(step, 3) for step in (0, 1, 2, 3)] == [0, 0, 33, 66]
    assert overall_percent(3, 3, done=True) == 100
    state = JobState(id="j", title="enc on synthetic S1", status="running", step=3, n_steps=3, step_name="evaluate",
                     percent=100, started=100.0)
    assert progress_text(state, now=142.0) == ("**enc on synthetic S1** — running · step 3/3: evaluate · 2 of 3 steps "
                                               "done (66%) · 42 s")
    done = JobState(id="j", title="t", status="done", step=3, n_steps=3, step_name="evaluate", started=0.0, finished=9.0)
    assert "3 of 3 steps done (100%)" in progress_text(done)


def test_the_log_shows_each_command_with_its_interpreter(tmp_path):
    job = TrainingJob(tmp_path, "t", [("one", ["-c", "print('ran')"])]).start()
    assert job.wait(60).status == "done"
    assert job.log_tail().splitlines()[0] == f"$ {Path(sys.executable).name} -c print('ran')"


@pytest.mark.parametrize("since, until, message", [
    ("2026-02-30", "", "'From' must be a date YYYY-MM-DD"),
    ("", "yesterday", "'To' must be a date YYYY-MM-DD"),
    ("2026-12-31", "2026-01-01", "'From' (2026-12-31) is after 'To' (2026-01-01)"),
])
def test_history_dates_are_messages_naming_from_and_to(service, since, until, message):
    """22.12: the status says what is wrong, by the fields' labels; the page is left as it was (no Error badges)."""
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        history.check_dates(since, until)
    with gr.Blocks():
        parts = history.build(service)
    load, _, outputs = parts["refresh"]
    out = load("", "", since, until, "", 0, [])
    status = out[[o.elem_id for o in outputs].index("history-status")]
    assert message in status and "since" not in status
    assert all(isinstance(o, dict) and o.get("__type__") == "update" for i, o in enumerate(out) if i != 2)
    assert history.check_dates(" 2026-01-01 ", "2026-01-01T12:00:00") == ("2026-01-01", "2026-01-01T12:00:00")


def test_history_thumbnails_tell_results_apart(service):
    """22.12: two results of one target and seed differ in their captions by what differs (prompt, mode)."""
    for prompt, mode in (("", "exact"), ("a red ball", "fast")):
        list(service.generate(GenerationRequest(steps=2, seed=0, target="FFA", prompt=prompt, mode=mode)))
    entries = [e for e in service.catalog.query() if e.seed == 0 and e.target == "FFA"][:2]
    captions = [history.thumbnail_caption(e) for e in entries]
    assert len(set(captions)) == 2
    for caption, entry in zip(captions, entries):
        assert all(part in caption for part in ("max FFA · seed 0", "S1", "demo", entry.description.mode,
                                                entry.created[:10]))
    assert any('"a red ball"' in c for c in captions)


def test_evaluate_is_off_offline_with_one_clean_message_and_no_empty_table(service, monkeypatch):
    """22.14: without the weights the button is disabled and the note says why; the table is hidden until there
    are results; a load failure is one message without the Hub's error."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)
    assert "not cached" in weights_unavailable(ZeroShotConfig())
    assert weights_unavailable(ZeroShotConfig(pretrained=None, weights="/no/such.safetensors"))
    with gr.Blocks() as app:
        history.build(service)
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["evaluate-run"].interactive is False and by_id["evaluate-table"].visible is False
    assert "Evaluate is off" in by_id["evaluate-note"].value

    def hub_failure(config):
        raise RuntimeError("CLIP zero-shot needs ... 404 Client Error: Repository Not Found for url: https://huggingface.co")

    import braindive.evaluation

    monkeypatch.setattr(braindive.evaluation, "load_classifier", hub_failure)  # what the service's classifier loads
    on_run = next(d.fn for d in app.fns.values() if getattr(d.fn, "__name__", "") == "on_run")
    ids = [e.id for e in service.catalog.query()][:1]
    with pytest.raises(gr.Error) as raised:
        on_run(ids, "", "", "", "", "")
    assert "huggingface.co" not in raised.value.message and "404" not in raised.value.message


def test_every_incompatible_image_is_named(service):
    """22.14: images of one label made for other voxels (two voxel sets of one size), every one named."""
    ffa, ppa = service.subject("S1").roi("FFA")[:3].tolist(), service.subject("S1").roi("PPA")[:3].tolist()
    for voxels in (ffa, ppa, ppa):
        list(service.generate(GenerationRequest(steps=2, seed=7, target=CUSTOM, voxels=tuple(voxels))))
    ids = [e.id for e in service.catalog.query(label="max voxels (3)")][::-1]  # oldest (the FFA voxels) first
    assert len(ids) == 3
    odd = [i for i in ids if service.catalog.record(i)["objective"]["positive"] != ffa]
    assert len(odd) == 2
    with pytest.raises(ValueError, match="different objectives") as raised:
        generated_sets(ids, service.catalog)
    assert all(i in str(raised.value) for i in odd), (odd, str(raised.value))
