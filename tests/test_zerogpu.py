"""Generation through a stand-in for ZeroGPU's ``spaces.GPU`` that keeps the real one's contract.

On a ZeroGPU Space the decorated generator runs in a forked GPU process: its arguments and every
item it yields are pickled, and closing the consumer only sets a stop flag that the GPU process
checks after its next item. The stand-in does the same with pickle and a thread.
"""
import inspect
import pickle
import queue
import sys
import threading
import types

import pytest

from ui.service import Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError
from ui.settings import Settings


def zerogpu_standin():
    """A ``spaces`` module whose ``GPU`` pickles arguments and items and stops by flag, like ZeroGPU's.

    ``duration`` may be a number or a function of the task's arguments (ZeroGPU's dynamic duration).
    """
    durations, gpu_threads = [], []

    def GPU(duration=60):
        def decorate(task):
            if not inspect.isgeneratorfunction(task):  # a plain GPU function (evaluation): pickled in, pickled out
                def call(*args, **kwargs):
                    args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                    durations.append(duration(*args, **kwargs) if callable(duration) else duration)
                    return pickle.loads(pickle.dumps(task(*args, **kwargs)))
                return call

            def handler(*args, **kwargs):
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                durations.append(duration(*args, **kwargs) if callable(duration) else duration)
                results, stop = queue.Queue(), threading.Event()

                def gpu_process():
                    gen = task(*args, **kwargs)
                    try:
                        for item in gen:
                            if stop.is_set():
                                gen.close()
                                break
                            results.put(pickle.dumps(item))
                    except Exception as exc:  # ZeroGPU shows only the class name of non-Gradio errors
                        results.put(RuntimeError(f"ZeroGPU worker error: {type(exc).__name__}"))
                    results.put(None)

                gpu_threads.append(threading.Thread(target=gpu_process, daemon=True))
                gpu_threads[-1].start()
                while (item := results.get(timeout=60)) is not None:
                    if isinstance(item, Exception):
                        raise item
                    try:
                        yield pickle.loads(item)
                    except GeneratorExit:
                        stop.set()
                        raise
            return handler
        return decorate

    return types.SimpleNamespace(GPU=GPU, durations=durations, gpu_threads=gpu_threads)


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    spaces = zerogpu_standin()
    sys.modules["spaces"] = spaces
    try:
        service = Service(Settings(data_dir=str(tmp_path_factory.mktemp("zero")), image_size=64, max_images=4,
                                   gpu_step_seconds=2.0))
    finally:
        del sys.modules["spaces"]
    service.backend()
    return service, spaces


def test_generation_streams_through_the_gpu_process_and_is_cataloged(zero):
    service, spaces = zero
    items = list(service.generate(GenerationRequest(steps=3, n_images=2, seed=7)))
    kinds = [type(i).__name__ for i in items]
    # per image: guided steps, the unguided comparison's steps, then the result
    assert kinds == ["Progress"] * 6 + ["ImageResult"] + ["Progress"] * 6 + ["ImageResult", "Finished"]
    assert spaces.durations[-1] == 10 + 3 * 2 * 2 * 2.0  # overhead + steps x images x (guided + unguided) x 2 s
    results = [i for i in items if isinstance(i, ImageResult)]
    assert [r.seed for r in results] == [7, 8]
    assert [e.seed for e in service.catalog.query()][:2] == [8, 7]  # stored by the app process, newest first
    assert items[-1].message == "Done: 2 image(s)."


def test_stop_reaches_the_gpu_process_and_frees_the_model(zero):
    service, spaces = zero
    seen = []
    for item in service.generate(GenerationRequest(steps=8, n_images=3), session="zoe"):
        seen.append(item)
        if isinstance(item, Progress) and item.step == 2:
            assert service.cancel("zoe")
    assert isinstance(seen[-1], Finished) and seen[-1].interrupted and seen[-1].results == []
    assert max(i.step for i in seen if isinstance(i, Progress)) <= 3
    spaces.gpu_threads[-1].join(30)  # the GPU process ends after its current step
    assert not spaces.gpu_threads[-1].is_alive(), "the GPU task kept running after Stop"
    assert service.slots.running == 0  # the pipeline is free for the next request
    assert isinstance(list(service.generate(GenerationRequest(steps=2)))[-1], Finished)


def test_errors_in_the_gpu_process_keep_their_message(zero, monkeypatch):
    service, _ = zero

    def fails(*args, **kwargs):
        raise ValueError("`latents` must have shape (1, 4, 8, 8)")

    monkeypatch.setattr(type(service.backend().pipe), "__call__", fails)
    with pytest.raises(ServiceError, match=r"`latents` must have shape \(1, 4, 8, 8\)"):
        list(service.generate(GenerationRequest(steps=2)))


def test_the_gpu_budget_follows_the_request(zero):
    service, spaces = zero
    list(service.generate(GenerationRequest(steps=4, n_images=1)))
    list(service.generate(GenerationRequest(steps=2, n_images=3)))
    assert spaces.durations[-2:] == [10 + 4 * 1 * 2 * 2.0, 10 + 2 * 3 * 2 * 2.0]
    assert service.gpu_seconds(GenerationRequest(steps=1, n_images=1)) == 20  # at least 20 s
    assert service.gpu_seconds(GenerationRequest(steps=100, n_images=4)) == 300  # at most 300 s


def test_the_pinned_spaces_package_leaves_the_task_alone_off_zerogpu():
    """requirements-zerogpu.txt installs the real ``spaces``; without ZeroGPU hardware the task runs as is."""
    spaces = pytest.importorskip("spaces")  # absent from requirements.txt's environment
    from ui.zerogpu import gpu_duration, gpu_task

    def task(n):
        yield from range(n)

    assert "duration" in inspect.signature(spaces.GPU).parameters
    assert list(gpu_task(task, lambda n: gpu_duration(n, 1, 0.5))(3)) == [0, 1, 2]
