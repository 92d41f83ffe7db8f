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
import time
import types

import pytest

from ui.service import Finished, GenerationRequest, ImageResult, Progress, Service, ServiceError
from ui.settings import Settings


def zerogpu_standin():
    """A ``spaces`` module whose ``GPU`` pickles arguments and items and stops by flag, like ZeroGPU's."""
    durations = []

    def GPU(duration=60):
        def decorate(task):
            assert inspect.isgeneratorfunction(task), "the app's GPU task must be a generator to stream"

            def handler(*args, **kwargs):
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                durations.append(duration)
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

                threading.Thread(target=gpu_process, daemon=True).start()
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

    return types.SimpleNamespace(GPU=GPU, durations=durations)


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    spaces = zerogpu_standin()
    sys.modules["spaces"] = spaces
    try:
        service = Service(Settings(data_dir=str(tmp_path_factory.mktemp("zero")), image_size=64, max_images=4))
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
    assert spaces.durations[-1] == 120
    results = [i for i in items if isinstance(i, ImageResult)]
    assert [r.seed for r in results] == [7, 8]
    assert [e.seed for e in service.catalog.query()][:2] == [8, 7]  # stored by the app process, newest first
    assert items[-1].message == "Done: 2 image(s)."


def test_stop_reaches_the_gpu_process_and_frees_the_model(zero):
    service, _ = zero
    seen = []
    for item in service.generate(GenerationRequest(steps=8, n_images=3), session="zoe"):
        seen.append(item)
        if isinstance(item, Progress) and item.step == 2:
            assert service.cancel("zoe")
    assert isinstance(seen[-1], Finished) and seen[-1].interrupted and seen[-1].results == []
    assert max(i.step for i in seen if isinstance(i, Progress)) <= 3
    lock = service.backend().lock
    deadline = time.monotonic() + 30
    while not lock.acquire(timeout=0.1):  # the GPU process lets go of the model after its current step
        assert time.monotonic() < deadline, "the GPU task kept running after Stop"
    lock.release()


def test_errors_in_the_gpu_process_keep_their_message(zero, monkeypatch):
    service, _ = zero

    def fails(*args, **kwargs):
        raise ValueError("`latents` must have shape (1, 4, 8, 8)")

    monkeypatch.setattr(type(service.backend().pipe), "__call__", fails)
    with pytest.raises(ServiceError, match=r"`latents` must have shape \(1, 4, 8, 8\)"):
        list(service.generate(GenerationRequest(steps=2)))
