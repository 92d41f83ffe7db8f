"""One request, one meaning: the same four requests through the app's API (a real server), ``python -m braindive
generate`` and a batch sweep give the same pixels, labels, targets, signed measures and baselines, and every limit
is rejected with the same message (the field's label and range) by the UI, the API, the CLI and sweep files."""
import csv
import io
import json
import zipfile

import numpy as np
import pytest
import torch
from gradio_client import Client
from PIL import Image

from braindive.batch import SweepError, parse_sweep
from braindive.catalog import Catalog
from braindive.catalog_export import export_zip
from braindive.cli import main
from braindive.presets import LIMITS
from braindive.targets import Target
from ui import build_app
from ui import history
from ui.service import Service
from ui.settings import Settings

SEED, STEPS, SIZE, SCALE = 3, 3, 64, 20.0
# (label, the Target, Explore's fields: roi, hemisphere, objective, contrast, weight; CLI flags)
REQUESTS = [
    ("max FFA", Target.maximize("FFA"), ("FFA", "both", "maximize", "EBA", 1.0), ["--roi", "FFA"]),
    ("min PPA", Target.minimize("PPA"), ("PPA", "both", "minimize", "EBA", 1.0), ["--roi", "PPA", "--minimize"]),
    ("FFA − 0.5×PPA", Target.contrast("FFA", "PPA", 0.5), ("FFA", "both", "contrast", "PPA", 0.5),
     ["--roi", "FFA", "--contrast", "PPA", "--weight", "0.5"]),
    ("max FFA.lh", Target.maximize("FFA.lh"), ("FFA", "left (.lh)", "maximize", "EBA", 1.0), ["--roi", "FFA.lh"]),
]
SWEEP = f"""\
name = "doors"
model = "demo"
seeds = [{SEED}]

[[encoders]]
subject = "S1"
path = "demo"

[targets]
rois = ["FFA", "FFA.lh"]
minimize = ["PPA"]
contrasts = [{{ positive = "FFA", negative = "PPA", weight = 0.5 }}]

[settings]
steps = {STEPS}
height = {SIZE}
width = {SIZE}

[execution]
cpus_per_worker = 1
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every door on one torch thread (the sweep's one-CPU worker runs so): bit-identical floating point."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = Settings(data_dir=str(tmp_path_factory.mktemp("app")), image_size=SIZE,
                        max_images=int(LIMITS["n_images"].hi))  # the table's ranges, so messages match the CLI's
    service = Service(settings)
    app = build_app(service, settings)
    app.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield app, service
    app.close()


def _api_run(client, **overrides):
    fields = dict(subj="S1 · pycortex:S1:visual+4mm", enc="demo", obj="maximize", con="EBA", w=1.0, sc=SCALE,
                  n_steps=STEPS, sched="dpm", sd=SEED, n=1, k=1, text="", guidance="exact")
    subject = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"][0]
    fields["subj"] = subject["parameter_default"]
    return client.predict(**{**fields, **overrides}, api_name="/run")


@pytest.fixture(scope="module")
def app_results(server):
    """Each request through the API: select the region (/choose_roi), then /run; the caption the gallery shows."""
    app, service = server
    out = {}
    for label, _, (roi, hemi, objective, contrast, weight), _ in REQUESTS:
        client = Client(app.local_url, verbose=False)
        subject = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/run"]["parameters"][0]
        client.predict(subject["parameter_default"], roi, hemi, objective, contrast, api_name="/choose_roi")
        result = _api_run(client, obj=objective, con=contrast, w=weight)
        gallery = result[2]
        (entry,) = service.catalog.query(label=label)
        out[label] = {"entry": entry, "record": service.catalog.record(entry.id), "caption": gallery[0]["caption"],
                      "catalog": service.catalog}
        client.close()
    return out


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    out = {}
    for label, _, _, flags in REQUESTS:
        root = tmp_path_factory.mktemp("cli")
        assert main(["generate", *flags, "--n", "1", "--seed", str(SEED), "--steps", str(STEPS), "--height", str(SIZE),
                     "--width", str(SIZE), "--out", str(root)]) == 0
        catalog = Catalog(root)
        (entry,) = catalog.query()
        out[label] = {"entry": entry, "record": catalog.record(entry.id), "catalog": catalog}
    return out


@pytest.fixture(scope="module")
def sweep_results(local_ray, tmp_path_factory):
    from braindive.batch.runner import WorkerPool, run_sweep

    root = tmp_path_factory.mktemp("sweep")
    sweep = parse_sweep(SWEEP, source="doors.toml")
    pool = WorkerPool("demo", 1, cpus_per_worker=1)
    try:
        run_sweep(sweep, catalog_dir=root, pool=pool, log=lambda m: None)
    finally:
        pool.close()
    catalog = Catalog(root)
    summary = json.loads((root / "runs" / sweep.run_id / "summary.json").read_text())
    out = {}
    for label, *_ in REQUESTS:
        (entry,) = catalog.query(label=label)
        out[label] = {"entry": entry, "record": catalog.record(entry.id), "catalog": catalog,
                      "summary": summary["jobs"][f"demo/{label}"]}
    return out


def _manifest_row(catalog, entry_id, tmp_path):
    export = export_zip(catalog, [entry_id], tmp_path / f"{entry_id}.zip")
    with zipfile.ZipFile(export.path) as zf:
        (row,) = csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))
        assert any(n.startswith("unguided/") for n in zf.namelist())  # the catalog exports its unguided files
    return row


@pytest.mark.parametrize("label, target", [(r[0], r[1]) for r in REQUESTS])
def test_every_door_makes_the_same_result(app_results, cli_results, sweep_results, label, target, tmp_path):
    doors = {"app": app_results[label], "cli": cli_results[label], "sweep": sweep_results[label]}
    pixels = {name: np.asarray(Image.open(d["entry"].image_path)) for name, d in doors.items()}
    assert np.array_equal(pixels["app"], pixels["cli"]) and np.array_equal(pixels["cli"], pixels["sweep"])
    for name, d in doors.items():
        record, entry = d["record"], d["entry"]
        assert record["label"] == entry.label == target.label, name  # record, History's label
        assert Target.from_dict(record["target_spec"]) == target, name
        # the measure, computed here from the stored map: the signed quantity (min PPA: PPA's mean, not negated)
        acts = d["catalog"].activations(entry.id)
        expected = target.measure(acts, _s1())
        assert record["predicted_objective"] == pytest.approx(expected, abs=1e-5) == entry.objective, name
        unguided = np.load(d["catalog"].unguided_paths(entry.id)[1])
        assert record["baseline_measure"] == pytest.approx(target.measure(unguided, _s1()), abs=1e-5), name
        row = _manifest_row(d["catalog"], entry.id, tmp_path)
        assert row["label"] == target.label and float(row["predicted_objective"]) == pytest.approx(expected, abs=1e-5)
        assert history.find(_Door(d["catalog"]), label=target.label).entries[0].id == entry.id  # History's filter
    values = {name: d["record"]["predicted_objective"] for name, d in doors.items()}
    baselines = {name: d["record"]["baseline_measure"] for name, d in doors.items()}
    assert max(values.values()) - min(values.values()) < 1e-5 and len({np.sign(v) for v in values.values()}) == 1
    assert max(baselines.values()) - min(baselines.values()) < 1e-5
    if target.kind == "minimize":
        assert values["app"] < baselines["app"]  # guidance lowered PPA's mean: shown as a fall, never as a gain
    caption = doors["app"]["caption"]
    assert caption == (f"#1 · seed {SEED} · {target.label} · {target.value_text(values['app'])} "
                       f"(unguided {baselines['app']:.2f})")
    summary = doors["sweep"]["summary"]
    assert summary["objective"]["mean"] == pytest.approx(values["sweep"], abs=1e-9)
    assert summary["unguided"]["mean"] == pytest.approx(baselines["sweep"], abs=1e-9)
    assert doors["cli"]["entry"].id == doors["sweep"]["entry"].id  # one request, one image id


class _Door:
    """What ``history.find`` needs of a service: its catalog."""

    def __init__(self, catalog):
        self.catalog = catalog


def _s1():
    from braindive.subjects import load_subject

    return load_subject("S1")


# ---------------------------------------------------------------- every limit, every door, one message

LIMIT_CASES = [  # field, bad value, doors that take the field
    ("steps", 0, ("ui", "api", "cli", "sweep")),
    ("steps", 2.5, ("ui", "api", "cli", "sweep")),
    ("seed", 2.5, ("ui", "api", "cli", "sweep")),
    ("scale", -2000.0, ("ui", "api", "cli", "sweep")),
    ("weight", 11.0, ("ui", "api", "cli", "sweep")),
    ("prompt", "x" * 301, ("ui", "api", "cli", "sweep")),
    ("n_images", 0, ("ui", "api", "cli")),
    ("sag", 6.0, ("cli", "sweep")),
    ("cfg", 31.0, ("cli", "sweep")),
    ("height", 100, ("cli", "sweep")),
    ("keep", 1.5, ("cli", "sweep")),
]
_RUN_ARG = {"steps": "n_steps", "seed": "sd", "scale": "sc", "weight": "w", "prompt": "text", "n_images": "n"}
_CLI_FLAG = {"steps": "--steps", "seed": "--seed", "scale": "--scale", "weight": "--weight", "prompt": "--prompt",
             "n_images": "--n", "sag": "--sag", "cfg": "--cfg", "height": "--height", "keep": "--keep"}


def _sweep_text(field, value):
    text = SWEEP.replace(f"steps = {STEPS}\n", "")
    shown = json.dumps(value)
    if field == "seed":
        return text.replace(f"seeds = [{SEED}]", f"seeds = [{shown}]")
    if field == "weight":
        return text.replace("weight = 0.5", f"weight = {shown}")
    if field == "keep":
        return text + f"\n[rerank]\nkeep = {shown}\n"
    key = {"steps": "steps", "scale": "scale", "prompt": "prompt", "sag": "sag", "cfg": "cfg", "height": "height"}[field]
    return text.replace("[settings]\n", f"[settings]\n{key} = {shown}\n").replace(f"height = {SIZE}\n", "", key == "height")


def _message(door, field, value, server, capsys, tmp_path):
    import gradio as gr
    from types import SimpleNamespace

    app, service = server
    if door == "ui":  # the Generate button's event, as the browser calls it
        (run,) = [dep.fn for dep in app.fns.values() if getattr(dep.fn, "__name__", "") == "run"]
        subject = service.subject_names()[0]
        args = {"subj": subject, "enc": "demo", "st": {"target": "FFA", "hemi": "both", "voxels": [], "results": []},
                "obj": "contrast", "con": "PPA", "w": 1.0, "sc": SCALE, "n_steps": STEPS, "sched": "dpm", "sd": SEED,
                "n": 1, "k": 1, "text": "", "guidance": "exact", "kind": "guided − unguided",
                "lim": "robust: 2nd–98th percentile of the map"}
        args[_RUN_ARG[field]] = value
        with pytest.raises(gr.Error) as err:
            next(run(*args.values(), request=SimpleNamespace(session_hash="limits", username=None)))
        return str(err.value.message)
    if door == "api":
        from gradio_client.exceptions import AppError

        client = Client(app.local_url, verbose=False)
        with pytest.raises(AppError) as err:
            _api_run(client, obj="contrast", con="PPA", **{_RUN_ARG[field]: value})
        client.close()
        return str(err.value)
    if door == "cli":
        capsys.readouterr()
        assert main(["generate", "--contrast", "PPA", "--steps", str(STEPS), "--n", "1", "--height", str(SIZE),
                     "--width", str(SIZE), _CLI_FLAG[field], str(value), "--out", str(tmp_path / "never")]) == 2
        assert not (tmp_path / "never" / "images").exists() or not list((tmp_path / "never" / "images").iterdir())
        return capsys.readouterr().err.strip().removeprefix("error: ")
    with pytest.raises(SweepError) as err:
        parse_sweep(_sweep_text(field, value), source="limits.toml")
    return str(err.value).split(": ", 1)[1]  # after "limits.toml:LINE"


@pytest.mark.parametrize("field, value, doors", LIMIT_CASES)
def test_every_limit_is_rejected_identically_at_every_door(server, capsys, tmp_path, field, value, doors):
    limit = LIMITS[field]
    shown = f"{len(value)} characters" if isinstance(value, str) else repr(value)
    expected = f"`{limit.label}` must be {limit.range_text}, got {shown}."
    messages = {door: _message(door, field, value, server, capsys, tmp_path) for door in doors}
    assert messages == {door: expected for door in doors}
