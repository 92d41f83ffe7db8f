"""Explore's "Split region…" and "Start from an image" panels: service level, then in the browser."""
import numpy as np
import PIL.Image
import pytest

from braindive import subregions as sr
from braindive.targets import Target
from service_support import demo_service
from ui import subregions as panels


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    service = demo_service(tmp_path_factory.mktemp("data"))
    service.backend().defaults["num_inference_steps"] = 3  # speed: the numbers are checked elsewhere
    return service


def _colour_pixels(image: np.ndarray, hex_colour: str) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(-1) <= 2).sum())


def test_split_draws_each_part_in_its_colour_with_a_legend(service):
    subject = service.subject_names()[0]
    encoder = service.encoders_for(subject)[0]
    parts, rows = panels.split(service, subject, encoder, "OPA", 2, "response profile (encoder weights)",
                               "posterior-anterior", "")
    expected = sr.split_region(service.subject(subject), "OPA", 2, "weights", encoder=service.encoder(encoder))
    assert [p.voxels.tolist() for p in parts.parts] == [p.voxels.tolist() for p in expected.parts]
    image = panels.parts_map(service, subject, parts)
    first, second = (_colour_pixels(image, c) for c in panels.PART_COLOURS[:2])
    assert first > 50 and second > 50
    assert _colour_pixels(image, panels.PART_COLOURS[2]) == 0
    legend = panels.legend(parts, rows)
    assert "OPA·1/2" in legend and "OPA·2/2" in legend and legend.count("part-swatch") == 2


def test_generate_for_each_part_and_start_from_an_image(service):
    subject = service.subject_names()[0]
    encoder = service.encoders_for(subject)[0]
    parts, _ = panels.split(service, subject, encoder, "FFA", 2, "anatomy", "posterior-anterior", "")
    gallery, table = panels.cross_predict(service, encoder, parts, 2, 0, "maximize", "fast")
    assert len(gallery) == 4 and [row[0] for row in table] == ["FFA·post", "FFA·ant"]
    reference = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 60, 3), dtype=np.uint8))
    ref, control, guided, text = panels.vary(service, subject, encoder, "FFA", "maximize", reference, 0.5, 20.0, 0, "fast")
    assert ref.size == control.size == guided.size == (64, 64)
    assert "SSIM" in text and "Strength 0.5" in text
    entry = service.catalog.query(target="FFA")[0]  # History keeps the strength and the reference's pixel hash
    record = service.catalog.record(entry.id)
    assert record["parameters"]["strength"] == 0.5
    assert record["target_spec"] == {**Target.maximize("FFA").to_dict()}
    assert record["baseline_measure"] == pytest.approx(float(text.split("control ")[1].split(" ")[0]), abs=1e-3)
    assert record["parameters"]["reference"]["sha256"] == panels.V.image_hash(reference)
    assert entry.objective == pytest.approx(float(text.split("guided ")[1].split(" ")[0]), abs=1e-3)
    with pytest.raises(panels.ServiceError, match="Strength"):
        panels.vary(service, subject, encoder, "FFA", "maximize", reference, 1.5, 20.0, 0, "fast")
