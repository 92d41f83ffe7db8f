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
    gallery, table = panels.cross_predict(service, encoder, parts, 2, 0, "maximize", "fast", owner="me")
    assert len(gallery) == 4 and [row[0] for row in table] == ["FFA·post", "FFA·ant"]
    # History: each part's images, owned by whoever made them, labelled and measured as the part's target
    stored = {(e.target, e.seed): e for e in service.catalog.query(owner="me")}
    assert sorted(stored) == [("FFA·ant", 0), ("FFA·ant", 1), ("FFA·post", 0), ("FFA·post", 1)]
    assert service.catalog.query(owner="someone else") == []
    for (name, seed), entry in stored.items():
        record = service.catalog.record(entry.id)
        part = parts.parts[[p.name for p in parts.parts].index(name)]
        assert record["label"] == f"max {name}" and record["subregion"]["part"] == name
        activations = np.load(entry.image_path.with_suffix(".npy"))
        assert entry.objective == pytest.approx(activations[part.voxels].mean(), abs=1e-4)
        assert service.catalog.unguided_paths(entry.id)[0].is_file()  # History's guided vs unguided pair
        assert np.array_equal(np.asarray(PIL.Image.open(entry.image_path)), np.asarray(gallery[
            [c for _, c in gallery].index(f"{name} · seed {seed}")][0]))
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


def test_split_region_panel_and_cli_give_the_same_images_and_records(service, tmp_path):
    """One request, two doors: the panel's "Generate for each part" and ``python -m braindive subregions``."""
    from braindive.cli import main

    subject = service.subject_names()[0]
    encoder = service.encoders_for(subject)[0]
    parts, _ = panels.split(service, subject, encoder, "OPA", 2, "response profile (encoder weights)",
                            "posterior-anterior", "")
    gallery, table = panels.cross_predict(service, encoder, parts, 1, 5, "contrast", "fast", owner="door")
    settings = panels.panel_settings(service, "fast")
    out = tmp_path / "cli"
    assert main(["subregions", "--roi", "OPA", "--k", "2", "--by", "weights", "--generate", "1", "--gen-seed", "5",
                 "--kind", "contrast", "--mode", "fast", "--steps", str(settings.steps), "--height", str(settings.height),
                 "--width", str(settings.width), "--out", str(out)]) == 0
    from braindive.catalog import Catalog

    cli = Catalog(out)
    cli_records = {cli.record(e.id)["label"]: (e, cli.record(e.id)) for e in cli.query()}
    app_records = {service.catalog.record(e.id)["label"]: (e, service.catalog.record(e.id))
                   for e in service.catalog.query(owner="door")}
    assert sorted(cli_records) == sorted(app_records) == ["OPA·1/2 − 1.0×OPA·rest", "OPA·2/2 − 1.0×OPA·rest"]
    for label, (app_entry, app) in app_records.items():
        cli_entry, record = cli_records[label]
        assert record["target_spec"] == app["target_spec"] and record["subregion"]["part"] == app["subregion"]["part"]
        assert record["predicted_objective"] == pytest.approx(app["predicted_objective"], abs=1e-5)
        assert record["baseline_measure"] == pytest.approx(app["baseline_measure"], abs=1e-5)
        assert np.array_equal(np.asarray(PIL.Image.open(app_entry.image_path)), np.asarray(PIL.Image.open(cli_entry.image_path)))
    rows = {row[0]: row for row in table}
    with open(out / "cross_prediction.csv") as f:
        import csv

        for row in csv.DictReader(f):
            assert float(row["margin"]) == pytest.approx(rows[row["images for"]][-1], abs=1e-4)


def test_split_and_generate_on_the_built_in_volume_subject(service):
    """S1-fullhead (a volume subject, its encoder derived on first use): parts on the flatmap, images in History."""
    subject = next(label for label in service.subject_names() if "fullhead" in label)
    encoder = service.encoders_for(subject)[0]
    volume = service.subject(subject)
    parts, rows = panels.split(service, subject, encoder, "FFA", 2, "anatomy", "posterior-anterior", "")
    y = volume.affine[1, :3] @ volume.ijk.T.astype(float) + volume.affine[1, 3]  # scanner y of every voxel, by hand
    for hemi in (False, True):  # posterior half of each hemisphere's FFA first
        post, ant = (p.voxels[volume.is_right[p.voxels] == hemi] for p in parts.parts)
        assert y[post].max() <= y[ant].min()
    image = panels.parts_map(service, subject, parts)
    assert all(_colour_pixels(image, c) > 0 for c in panels.PART_COLOURS[:2])
    panels.cross_predict(service, encoder, parts, 1, 3, "maximize", "fast", owner="volume")
    entries = service.catalog.query(owner="volume")
    assert sorted(e.target for e in entries) == ["FFA·ant", "FFA·post"]
    assert {service.catalog.record(e.id)["subject_space"] for e in entries} == {volume.fingerprint}


def test_parts_of_one_subject_are_not_generated_with_another_subjects_encoder(service):
    surface = service.subject_names()[0]
    volume = next(label for label in service.subject_names() if "fullhead" in label)
    parts, _ = panels.split(service, surface, service.encoders_for(surface)[0], "FFA", 2, "anatomy",
                            "posterior-anterior", "")
    with pytest.raises(panels.ServiceError, match="split on another voxel space"):
        panels.cross_predict(service, service.encoders_for(volume)[0], parts, 1, 0, "maximize", "fast")
