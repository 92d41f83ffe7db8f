"""The app's service without a browser: generation stream, bad input, faults, concurrency, jobs."""
import threading

import numpy as np
import pytest
import torch

from ui.service import CUSTOM, Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError, Waiting
from ui.settings import Settings, parse_settings
from service_support import demo_service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    return demo_service(tmp_path_factory.mktemp("svc"))


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
    assert all(r.measure > r.baseline_measure for r in results)  # guided beats unguided, same seed
    stored = service.catalog.get(results[0].entry.id)
    assert stored.target == "FFA" and stored.seed == 4
    np.testing.assert_allclose(service.catalog.activations(stored.id), results[0].activations)
    assert items[-1].message == "Done: 2 image(s)." and not items[-1].interrupted


def test_fast_mode_is_recorded_and_still_guides(service):
    items = collect(service, mode="fast", seed=3)
    result = [i for i in items if isinstance(i, ImageResult)][0]
    assert result.measure > result.baseline_measure
    assert service.catalog.record(result.entry.id)["parameters"]["guidance_mode"] == "fast"


def test_custom_voxel_set_and_contrast(service):
    subject = service.subject("S1")
    voxels = tuple(int(v) for v in service.grow("S1", int(subject.roi("PPA")[0]), 5.0))
    result = [i for i in collect(service, target=CUSTOM, voxels=voxels) if isinstance(i, ImageResult)][0]
    assert result.target.label == f"max voxels ({len(voxels)})" and result.target.voxels == tuple(sorted(voxels))
    result = [i for i in collect(service, objective="contrast", contrast_target="V1") if isinstance(i, ImageResult)][0]
    assert result.target.label == "FFA − 1.0×V1"
    record = service.catalog.record(result.entry.id)
    assert record["target_spec"]["region_b"] == "V1" and record["label"] == "FFA − 1.0×V1"


def test_a_second_region_on_the_same_seed_skips_the_unguided_stage(service):
    first = collect(service, seed=21, target="PPA")
    second = collect(service, seed=21, target="EBA", objective="minimize")
    assert "unguided comparison" in {i.stage for i in first if isinstance(i, Progress)}
    assert {i.stage for i in second if isinstance(i, Progress)} == {"brain-guided"}  # no unguided steps
    a, b = (next(i for i in items if isinstance(i, ImageResult)) for items in (first, second))
    assert not a.baseline_reused and b.baseline_reused and a.baseline_key == b.baseline_key
    np.testing.assert_array_equal(np.asarray(a.baseline_image), np.asarray(b.baseline_image))
    subject = service.subject("S1")  # each target's baseline measure from the one unguided map
    assert b.baseline_measure == pytest.approx(a.baseline_activations[subject.roi("EBA")].mean(), abs=1e-5)
    assert b.caption == (f"seed 21 · min EBA · EBA mean {b.measure:.2f} (unguided {b.baseline_measure:.2f})")


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "`Steps` must be a whole number from 1 to 50, got 0."),  # this server's cap: max_steps=50
    (dict(steps=-5), "`Steps` must be a whole number from 1 to 50, got -5."),
    (dict(steps=100000), "`Steps` must be a whole number from 1 to 50, got 100000."),
    (dict(steps=2.5), "`Steps` must be a whole number from 1 to 50, got 2.5."),
    (dict(n_images=-3), "`Generate N images` must be a whole number from 1 to 4, got -3."),
    (dict(n_images=50), "`Generate N images` must be a whole number from 1 to 4, got 50."),
    (dict(n_images=1.5), "`Generate N images` must be a whole number from 1 to 4, got 1.5."),
    (dict(seed="abc"), "`Seed` must be a whole number from 0 to 2147483647, got 'abc'."),
    (dict(seed=-1), "`Seed` must be a whole number from 0 to 2147483647, got -1."),
    (dict(seed=2.5), "`Seed` must be a whole number from 0 to 2147483647, got 2.5."),
    (dict(prompt="x" * 10_000), "`Prompt` must be text of at most 300 characters, got 10000 characters."),
    (dict(encoder="e" * 300), "`encoder` must be an encoder name of 1 to 100 characters"),
    (dict(scale=float("nan")), "`Brain guidance scale` must be a number from -1000 to 1000, got nan."),
    (dict(weight=-1.0), "`Weight of B` must be a number from 0 to 10, got -1.0."),
    (dict(target=CUSTOM, voxels=(1.5, 2)), "`Custom voxels` must be a list of whole voxel indices"),
    (dict(target=CUSTOM, voxels=(True, 2)), "`Custom voxels` must be a list of whole voxel indices"),
    (dict(target=CUSTOM, voxels=("3",)), "`Custom voxels` must be a list of whole voxel indices"),
    (dict(scheduler="heun"), "`scheduler` must be one of"),
    (dict(objective="maximise"), "`objective` must be one of"),
    (dict(mode="turbo"), "`mode` must be one of ('exact', 'fast', 'reference'), got 'turbo'"),
    (dict(target="XYZ"), "`roi` must be one of"),
    (dict(target=CUSTOM, voxels=()), "`Custom voxels` is an empty voxel set"),
    (dict(target=CUSTOM, voxels=(1, 10**7)), "out of range"),
    (dict(objective="contrast", contrast_target=""), "`roi` must be one of"),
    (dict(objective="contrast", contrast_target="FFA"), "`contrast_target` must differ from the target 'FFA'"),
    (dict(encoder="missing-encoder"), "Unknown encoder 'missing-encoder'"),
    (dict(subject="subj01"), "is for subject 'S1 · pycortex:S1:visual+4mm', not 'subj01'"),
])
def test_bad_requests_are_clear_errors(service, kwargs, message):
    before = len(service.catalog.query(limit=10**6))
    with pytest.raises(ServiceError) as err:
        collect(service, **kwargs)
    assert message in str(err.value)
    assert len(service.catalog.query(limit=10**6)) == before  # rejected, not run with a changed value


def test_whole_numbers_typed_as_text_or_float_are_accepted_unchanged(service):
    items = collect(service, steps=2.0, seed="7", n_images="1")
    assert [i.step for i in items if isinstance(i, Progress) and i.stage == "brain-guided"] == [1, 2]
    assert [i.seed for i in items if isinstance(i, ImageResult)] == [7]


def test_corrupt_trained_encoder_is_reported_not_fatal(service):
    broken = service.settings.models_dir / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{oops")
    try:
        with pytest.raises(ServiceError, match="Could not load encoder 'broken'.*corrupt"):
            collect(service, encoder="broken")
        assert service.subject_names() == ["S1 · pycortex:S1:visual+4mm", "S1-fullhead · fullhead"]  # broken: skipped
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


def _hold_pipeline_calls(monkeypatch, pipe_type, before_guided):
    """Run ``before_guided(pipe, seed)`` at the start of every guided pipeline call; returns the (pipe, seed) calls."""
    calls, original = [], pipe_type.__call__

    def call(pipe, *args, **kwargs):
        seed = kwargs["generator"][0].initial_seed()  # one generator per seed
        calls.append((pipe, seed))
        if kwargs.get("brain_guidance_scale"):
            before_guided(pipe, seed)
        return original(pipe, *args, **kwargs)

    monkeypatch.setattr(pipe_type, "__call__", call)
    return calls


def _consume(service, out, name, seed, on_item=None):
    items = out.setdefault(name, [])
    try:
        for item in service.generate(GenerationRequest(steps=3, n_images=1, seed=seed), session=name):
            items.append(item)
            if on_item:
                on_item(item)
    except Exception as exc:  # the test thread reports it to the test
        items.append(exc)


def test_a_queued_run_can_be_stopped_before_it_starts(service, monkeypatch):
    """B generates while A runs (one pipeline): B waits, is told so, and Stop takes it out of the queue."""
    a_running, release, b_waiting = threading.Event(), threading.Event(), threading.Event()

    def hold_a(pipe, seed):
        if seed == 11:
            a_running.set()
            assert release.wait(60)

    calls = _hold_pipeline_calls(monkeypatch, type(service.backend().pipe), hold_a)
    out = {}
    a = threading.Thread(target=_consume, args=(service, out, "A", 11))
    a.start()
    assert a_running.wait(60)
    b = threading.Thread(target=_consume, args=(service, out, "B", 22,
                                               lambda item: isinstance(item, Waiting) and b_waiting.set()))
    b.start()
    assert b_waiting.wait(60)
    assert service.cancel("B")
    b.join(60)
    release.set()
    a.join(120)
    waiting, finished = out["B"]
    assert waiting == Waiting(1) and waiting.message == "Waiting for 1 other generation…"
    assert finished.interrupted and finished.results == [] and "nothing was generated" in finished.message
    assert isinstance(out["A"][-1], Finished) and [r.seed for r in out["A"][-1].results] == [11]
    assert {seed for _, seed in calls} == {11}  # B's run never reached the pipeline, not even after A ended
    assert 22 not in [e.seed for e in service.catalog.query(limit=10**6)]
    assert service.slots.running == 0 and service.slots.waiting == 0


def test_concurrency_two_runs_two_generations_at_once(tmp_path, monkeypatch):
    """With --concurrency 2 two requests are inside the pipeline together: each waits for the other to arrive."""
    svc = Service(Settings(data_dir=str(tmp_path), image_size=64, concurrency=2))
    both_inside = threading.Barrier(2, timeout=60)  # broken (-> error) if the runs were serialised
    calls = _hold_pipeline_calls(monkeypatch, type(svc.backend().pipe), lambda pipe, seed: both_inside.wait())
    out = {}
    threads = [threading.Thread(target=_consume, args=(svc, out, name, seed)) for name, seed in (("ann", 1), ("ben", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for name, seed in (("ann", 1), ("ben", 2)):
        finished = out[name][-1]
        assert isinstance(finished, Finished), finished
        assert [r.seed for r in finished.results] == [seed]  # each user got their own image
    assert len({id(pipe) for pipe, _ in calls}) == 2 and not both_inside.broken


def test_painted_mask_errors(service):
    shape = service.flatmap_shape("S1")
    with pytest.raises(ServiceError, match="covers no voxels"):
        service.painted_voxels("S1", np.zeros(shape, bool))
    with pytest.raises(ServiceError, match="mask"):
        service.painted_voxels("S1", np.zeros(30, bool))


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


def test_gradio_server_variables_are_honoured_below_braindive_ones_and_flags():
    gradio = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "8080"}
    s = parse_settings([], environ=gradio)
    assert (s.host, s.port) == ("0.0.0.0", 8080)
    s = parse_settings([], environ={**gradio, "BRAINDIVE_PORT": "9001"})
    assert (s.host, s.port) == ("0.0.0.0", 9001)
    assert parse_settings(["--port", "9002", "--host", "127.0.0.1"], environ=gradio).port == 9002


def test_history_is_per_session_on_a_space_and_shared_on_a_lab_server():
    assert parse_settings([], environ={}).history == "shared"
    assert parse_settings([], environ={"SPACE_ID": "me/braindive"}).history == "session"
    assert parse_settings(["--history", "account"], environ={"SPACE_ID": "me/braindive"}).history == "account"
    with pytest.raises(SystemExit):
        parse_settings(["--history", "everyone"], environ={})


def test_the_catalog_index_and_job_files_are_not_served(tmp_path):
    """A real server with the app's launch paths: images and exports are served, the index and job folders are not."""
    import urllib.error
    import urllib.request

    import gradio as gr
    import PIL.Image

    import app as app_module
    from braindive.catalog import Catalog

    settings = Settings(data_dir=str(tmp_path / "data"))
    entry = Catalog(settings.catalog_dir).add(PIL.Image.new("RGB", (4, 4)), {"created": "2026-01-01T00:00:00",
                                              "subject": "S1", "target": "FFA", "seed": 1})
    settings.jobs_dir.mkdir()
    (settings.jobs_dir / "log.txt").write_text("secret")
    with gr.Blocks() as blocks:
        gr.Markdown("paths")
    blocks.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True,
                  **app_module.served_paths(settings))

    def status(path) -> int:
        try:
            with urllib.request.urlopen(f"{blocks.local_url}gradio_api/file={path.resolve()}", timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        assert status(entry.image_path) == 200
        assert status(settings.catalog_dir / "index.sqlite") == 403
        assert status(settings.jobs_dir / "log.txt") == 403
    finally:
        blocks.close()
