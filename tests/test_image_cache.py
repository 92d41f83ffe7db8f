"""Images Gradio serves are never read half-written while the same image is saved again (ui/image_cache.py)."""
import os
import threading

import gradio as gr
import numpy as np
import PIL.Image
from gradio import processing_utils

from ui import image_cache

IMAGE = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _short_reads(save, cache_dir, reads: int = 300) -> int:
    """Reads of the cached file (size from stat, then the bytes, as a file response does) that came up short
    while another thread saved the same image again and again."""
    path = save(IMAGE, str(cache_dir), format="png")
    size, short, stop = os.path.getsize(path), 0, threading.Event()

    def writer():
        while not stop.is_set():
            save(IMAGE, str(cache_dir), format="png")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(reads):
            declared = os.stat(path).st_size
            with open(path, "rb") as f:
                short += declared != size or len(f.read()) != size
    finally:
        stop.set()
        thread.join()
    return short


def test_saving_the_same_image_again_never_exposes_a_partial_file(tmp_path):
    assert _short_reads(image_cache.save_pil_to_cache, tmp_path) == 0
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["image.png"]  # no temporary files left


def test_gradio_components_save_images_through_it_once_installed(monkeypatch):
    monkeypatch.setattr(processing_utils, "save_pil_to_cache", processing_utils.save_pil_to_cache)  # undone after
    image_cache.install()
    component = gr.Image(format="png")  # as the app's preview; its files go to Gradio's own cache folder
    path = component.postprocess(IMAGE).path
    with PIL.Image.open(path) as png:  # the file holds the image itself
        assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(IMAGE))
    assert _short_reads(lambda image, _folder, format: component.postprocess(image).path, None) == 0
