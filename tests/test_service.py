"""The app's service without a browser: generation stream, bad input, faults, concurrency, jobs."""
import threading

import numpy as np
import pytest
import torch

from ui.jobs import TrainingJob
from ui.service import CUSTOM, Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError
from ui.settings import Settings, parse_settings


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(Settings(data_dir=str(tmp_path_factory.mktemp("svc")), image_size=64, max_steps=50, max_images=4))
    svc.backend()
    return svc


def collect(service, **kwargs):
    return list(service.generate(GenerationRequest(**{"steps": 3, **kwargs})))


def test_stream_has_progress_then_results_then_finished(service):
    items = collect(service, n_images=2, seed=4)
    kinds = [type(i).__name__ for i in items]
    # per image: the guided steps, then the unguided comparison's steps, then the result
    assert kinds == ["Progress"] * 6 + ["ImageResult"] + ["Progress"] * 6 + ["ImageResult", "Finished"]
    assert [i.step for i in items if isinstance(i, Progress)] == [1, 2, 3] * 4
    assert [i.stage for i in items if isinstance(i, Progress)][:6] == ["brain-guided"] * 3 + ["unguided comparison"] * 3
    results = [i for i in items if isinstance(i, ImageResult)]
    assert [r.seed for r in results] == [4, 5]
    assert all(r.objective > r.baseline_objective for r in results)  # guided beats unguided, same seed
    stored = service.catalog.get(results[0].entry.id)
    assert stored.target == "FFA" and stored.seed == 4
    np.testing.assert_allclose(service.catalog.activations(stored.id), results[0].activations)
    assert items[-1].message == "Done: 2 image(s)." and not items[-1].interrupted


def test_fast_mode_is_recorded_and_still_guides(service):
    items = collect(service, mode="fast", seed=3)
    result = [i for i in items if isinstance(i, ImageResult)][0]
    assert result.objective > result.baseline_objective
    assert service.catalog.record(result.entry.id)["parameters"]["guidance_mode"] == "fast"


def test_custom_voxel_set_and_contrast(service):
    subject = service.subject("S1")
    voxels = tuple(int(v) for v in service.grow("S1", int(subject.roi("PPA")[0]), 5.0))
    result = [i for i in collect(service, target=CUSTOM, voxels=voxels) if isinstance(i, ImageResult)][0]
    assert result.target == f"custom({len(voxels)} voxels)"
    result = [i for i in collect(service, objective="contrast", contrast_target="V1") if isinstance(i, ImageResult)][0]
    assert result.target == "FFA-vs-V1"


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "`steps` must be 1..50, got 0"),
    (dict(steps=51), "`steps` must be 1..50, got 51"),
    (dict(n_images=5), "`n_images` must be 1..4, got 5"),
    (dict(seed=-1), "`seed` must be 0..2^31-1"),
    (dict(scale=float("nan")), "`scale` must be a finite number"),
    (dict(scheduler="heun"), "`scheduler` must be one of"),
    (dict(objective="maximise"), "`objective` must be one of"),
    (dict(mode="turbo"), "`mode` must be one of ('exact', 'fast', 'reference'), got 'turbo'"),
    (dict(target="XYZ"), "`roi` must be one of"),
    (dict(target=CUSTOM, voxels=()), "The custom voxel set is empty"),
    (dict(target=CUSTOM, voxels=(1, 10**7)), "out of range"),
    (dict(objective="contrast", contrast_target=""), "`roi` must be one of"),
    (dict(encoder="missing-encoder"), "Unknown encoder 'missing-encoder'"),
    (dict(subject="subj01"), "is for subject 'S1', not 'subj01'"),
])
def test_bad_requests_are_clear_errors(service, kwargs, message):
    with pytest.raises(ServiceError) as err:
        collect(service, **kwargs)
    assert message in str(err.value)


def test_corrupt_trained_encoder_is_reported_not_fatal(service):
    broken = service.settings.models_dir / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{oops")
    try:
        with pytest.raises(ServiceError, match="Could not load encoder 'broken'.*corrupt"):
            collect(service, encoder="broken")
        assert service.subject_names() == ["S1"]  # the broken encoder is skipped, the app goes on
    finally:
        (broken / "config.json").unlink()
        broken.rmdir()
    assert isinstance(collect(service)[-1], Finished)


def test_gpu_out_of_memory_is_a_message_and_model_stays_usable(service, monkeypatch):
    pipe = service.backend().pipe

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(type(pipe), "__call__", oom)
    with pytest.raises(ServiceError, match="ran out of memory generating 1 image.*still loaded"):
        collect(service)
    monkeypatch.undo()
    assert isinstance(collect(service)[-1], Finished)


def test_unexpected_failure_is_a_message(service, monkeypatch):
    monkeypatch.setattr(type(service.backend().pipe), "__call__", lambda *a, **k: 1 / 0)
    with pytest.raises(ServiceError, match=r"Generation failed \(ZeroDivisionError"):
        collect(service)


def test_cancel_keeps_finished_images(service):
    stream = service.generate(GenerationRequest(steps=6, n_images=3), session="alice")
    seen = []
    for item in stream:
        seen.append(item)
        if isinstance(item, Progress) and item.image_index == 1 and item.step == 2:
            assert service.cancel("alice")
    finished = seen[-1]
    assert isinstance(finished, Finished) and finished.interrupted
    assert len(finished.results) == 1 and "kept 1 finished image" in finished.message
    assert not service.cancel("alice")  # nothing left running for that session


def test_two_users_at_once_each_get_their_own_run(service):
    out = {}

    def user(name, seed, cancel_at):
        items = []
        for item in service.generate(GenerationRequest(steps=4, n_images=1, seed=seed), session=name):
            items.append(item)
            if cancel_at and isinstance(item, Progress) and item.step == cancel_at:
                service.cancel(name)
        out[name] = items

    threads = [threading.Thread(target=user, args=("bob", 11, None)), threading.Thread(target=user, args=("eve", 22, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    bob = [i for i in out["bob"] if isinstance(i, ImageResult)]
    assert [r.seed for r in bob] == [11] and not out["bob"][-1].interrupted
    assert out["eve"][-1].interrupted and out["eve"][-1].results == []
    assert all(isinstance(i, (Progress, Finished)) for i in out["eve"])


def test_painted_mask_errors(service):
    shape = service.flatmap_shape("S1")
    with pytest.raises(ServiceError, match="covers no voxels"):
        service.painted_voxels("S1", np.zeros(shape, bool))
    with pytest.raises(ServiceError, match="mask"):
        service.painted_voxels("S1", np.zeros(30, bool))


def test_training_job_crash_is_reported_with_log(tmp_path):
    job = TrainingJob(tmp_path, "crash", [("boom", ["-c", "import sys; print('about to fail'); sys.exit(3)"])]).start()
    state = job.wait(60)
    assert state.status == "failed" and state.returncode == 3
    assert "about to fail" in job.log_tail()


def test_training_log_tail_keeps_the_latest_progress_line(tmp_path):
    script = ("import sys\nprint('Inkscape not found. Some tests will be skipped. If you are on a Mac ...')\n"
              "for i in (10, 50, 100): sys.stdout.write(f'fit: {i:3d}%|##| {i}/100\\r')\nprint()\nprint('done')")
    job = TrainingJob(tmp_path, "bars", [("bars", ["-c", script])]).start()
    assert job.wait(60).status == "done"
    assert job.log_tail().splitlines()[-2:] == ["fit: 100%|##| 100/100", "done"]
    assert not [line for line in job.log_tail().splitlines() if line.startswith("Inkscape")]  # pycortex's notice


def test_training_job_cancel(tmp_path):
    job = TrainingJob(tmp_path, "slow", [("sleep", ["-c", "import time; time.sleep(60)"]),
                                         ("never", ["-c", "print('ran')"])]).start()
    import time

    time.sleep(1.0)
    job.cancel()
    state = job.wait(30)
    assert state.status == "cancelled" and "ran" not in job.log_tail()


def test_start_training_rejects_bad_input(service):
    with pytest.raises(ServiceError, match="Dataset file not found: 'nope.h5'"):
        service.start_training("nsd", "nope.h5", "x")
    with pytest.raises(ServiceError, match="Encoder name may use letters"):
        service.start_training("synthetic", name="bad name!")
    with pytest.raises(ServiceError, match="`dataset` must be synthetic, nsd or generic"):
        service.start_training("mri", name="x")


def test_settings_flags_override_environment():
    s = parse_settings(["--port", "9000"], environ={"BRAINDIVE_PORT": "8000", "BRAINDIVE_MAX_STEPS": "30",
                                                    "BRAINDIVE_SHARE": "true"})
    assert s.port == 9000 and s.max_steps == 30 and s.share is True and s.preset == "auto"


def test_space_listens_on_all_interfaces():
    assert parse_settings([], environ={"SPACE_ID": "me/braindive"}).host == "0.0.0.0"
    assert parse_settings([], environ={}).host == "127.0.0.1"


def test_sd21_preset_loads_a_model_folder_and_an_encoder_checkpoint(tmp_path):
    """The real-model path (``from_pretrained`` of a folder, encoder by path), with the demo's files standing in."""
    from braindive.demo import ASSET_DIFFUSION, ASSET_ENCODER

    settings = Settings(preset="sd21", model=str(ASSET_DIFFUSION), encoder=str(ASSET_ENCODER), data_dir=str(tmp_path),
                        image_size=64)
    svc = Service(settings)
    assert svc.label() == f"{ASSET_DIFFUSION} + your encoder" and svc.encoder_names() == [str(ASSET_ENCODER)]
    assert svc.backend().defaults["num_inference_steps"] == 50 and svc.backend().defaults["brain_guidance_scale"] == 130
    items = list(svc.generate(GenerationRequest(encoder=str(ASSET_ENCODER), steps=2, target="PPA")))
    result = [i for i in items if isinstance(i, ImageResult)][0]
    assert result.image.size == (64, 64) and items[-1].message == "Done: 1 image(s)."
    record = svc.catalog.record(result.entry.id)
    assert record["model"] == str(ASSET_DIFFUSION) and record["parameters"]["brain_guidance_scale"] == 130.0
