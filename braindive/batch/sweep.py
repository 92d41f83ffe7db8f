"""Sweep files: subjects x encoders x targets x seeds x settings, read from TOML and checked before anything runs.

A sweep expands into *jobs* (one encoder, one ``braindive.targets.Target``, one setting) and each job
into images, one per seed. Every image has a deterministic id, a hash of (model, encoder, target voxels,
the subject's voxel-space fingerprint, settings, seed; ``braindive.generate.image_id``), so a re-run
finds what is already in the catalog. Start images (``init_images``) are read here, once: jobs carry their
pixels and ids use their pixel hash, so workers never open the files and a sweep folder that moves keeps its
ids. Numbers are checked against ``braindive.presets.LIMITS``, with the same messages as the app and the CLI.
Errors name the sweep file and the line of the bad key (``toml_reader``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (ZeroGPU Spaces): its backport, same API
    import tomli as tomllib

from ..generate import GenerationSettings as Settings
from ..generate import encoder_identity, image_id_from_key, target_key
from ..targets import Target
from .toml_reader import SweepError, TomlReader

__all__ = ["Sweep", "Job", "Settings", "EncoderSpec", "SweepError", "load_sweep", "parse_sweep", "image_id", "model_name",
           "DEMO", "SETTING_LIMITS"]

DEMO = "demo"  # model / encoder name of the offline demo bundle
_TOP_KEYS = {"name", "model", "catalog", "seeds", "encoders", "targets", "settings", "execution", "rerank", "evaluation",
             "stimuli"}
_TABLE_KEYS = {
    "encoders": {"subject", "path", "name"},
    "targets": {"rois", "minimize", "voxels", "contrasts", "subregions"},
    "settings": {"mode", "scale", "steps", "scheduler", "sag", "prompt", "cfg", "height", "width"},
    "execution": {"batch_size", "cpus_per_worker", "gpus_per_worker", "workers", "max_retries", "baseline",
                  "save_activations"},
    "rerank": {"keep"},
    "evaluation": {"enabled", "options"},
}
# settings checked by braindive.presets.LIMITS: sweep key -> limits field
SETTING_LIMITS = {"scale": "scale", "steps": "steps", "sag": "sag", "cfg": "cfg", "height": "height", "width": "width",
                  "prompt": "prompt"}
_EXECUTION_RANGES = {"batch_size": (int, 1, 256), "cpus_per_worker": (int, 1, 1024), "gpus_per_worker": (float, 0, 16),
                     "workers": (int, 0, 100000), "max_retries": (int, 0, 100)}
_IMAGE_SETTINGS = {"init_images", "strength", "nsd_dataset"}  # reference-image variations: start images x strengths
_SUBREGION_KEYS = {"roi", "k", "by", "axis", "seed", "images", "kind"}


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    path: str  # checkpoint folder, Hub id, or "demo"
    subject: str  # built-in subject name or subject .npz
    identity: str = ""  # what image ids use: a hash of a local checkpoint's files (so moving it keeps the ids)


@dataclass(frozen=True, eq=False)
class Job:
    """One encoder, one target, one setting; its images are one per seed."""

    encoder: EncoderSpec
    target: Target
    settings: Settings
    variant: str = ""  # the settings that differ between this sweep's jobs, e.g. "scale=10"
    target_key: dict = field(default_factory=dict, repr=False)  # generate.target_key on the encoder's subject

    @property
    def label(self) -> str:
        return f"{self.encoder.name}/{self.target.label}" + (f" [{self.variant}]" if self.variant else "")

    def key(self) -> dict:
        """What identifies this job's images, besides the model and the seed."""
        return {"encoder": self.encoder.identity or self.encoder.path, **self.target_key, "settings": self.settings.key()}


@dataclass
class Sweep:
    name: str
    model: str
    catalog: str
    seeds: list[int]
    encoders: list[EncoderSpec]
    jobs: list[Job]
    batch_size: int = 8
    cpus_per_worker: int = 1
    gpus_per_worker: float | None = None  # None: 1 when the cluster has GPUs
    workers: int = 0  # 0: as many as the resources allow
    max_retries: int = 3
    baseline: bool = True  # also score the unguided image of each seed
    save_activations: bool = True
    rerank_keep: float | None = None
    evaluation: dict | None = None
    stimuli: dict | None = None  # the [stimuli] table: a stimulus package at the end of the run
    source: str = ""
    fingerprint: str = field(default="", repr=False)

    @property
    def run_id(self) -> str:
        """Stable across re-runs of the same sweep, so a resumed run keeps its id."""
        return f"{self.name}-{self.fingerprint[:8]}"

    def image_ids(self, job: Job) -> list[str]:
        return [image_id(self.model, job, seed) for seed in self.seeds]

    @property
    def n_images(self) -> int:
        return len(self.jobs) * len(self.seeds)


def image_id(model: str, job: Job, seed: int) -> str:
    """Deterministic catalog id of one image: ``generate.image_id`` of the job's encoder, target, settings and seed."""
    return image_id_from_key(model_name(model), job.encoder.identity or job.encoder.path, job.target_key,
                             job.settings, seed)


def model_name(model: str) -> str:
    """The model's name in records and ids (``demo`` -> the demo preset's model id, as the app and CLI record it)."""
    from ..presets import PRESETS

    return PRESETS["demo"].model_id if model == DEMO else model


def load_sweep(path) -> Sweep:
    """Read and check a sweep file (see ``examples/sweep_demo.toml``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepError(f"Cannot read sweep file {path}: {exc.strerror or exc}.") from exc
    return parse_sweep(text, source=str(path), base_dir=path.parent)


def parse_sweep(text: str, source: str = "<sweep>", base_dir=".") -> Sweep:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{source}: not valid TOML: {exc}.") from exc
    return _Reader(text, source, Path(base_dir)).read(data)


class _Reader(TomlReader):
    """Builds a ``Sweep`` from parsed TOML; every error names ``source:line``."""

    # -------------------------------------------------------------- sections

    def read(self, data: dict) -> Sweep:
        self.check_keys(data, _TOP_KEYS, "")
        name = self.string(data.get("name"), "", "name")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            self.fail(f"`name` may hold letters, digits, '_', '.', '-' only, got {name!r}.", "", "name")
        model = self.string(data.get("model", DEMO), "", "model")
        catalog = self.string(data.get("catalog", "outputs/catalog"), "", "catalog")
        for table in _TABLE_KEYS:
            if table in data and not isinstance(data[table], list if table == "encoders" else dict):
                self.fail(f"`{table}` must be a {'[[' + table + ']] array' if table == 'encoders' else '[' + table + '] table'}.",
                          table)
        execution = self.execution(data.get("execution", {}))
        encoders, subjects = self.encoders(data.get("encoders"), model)
        targets = self.targets(data.get("targets"), encoders, subjects)
        settings = self.settings(data.get("settings", {}), model)
        varying = [k for k in Settings.__dataclass_fields__ if len({getattr(s, k) for s in settings}) > 1]
        jobs = [Job(enc, target, s, ",".join(_variant(s, k) for k in varying), key)
                for enc, s in itertools.product(encoders, settings) for target, key in targets[enc]]
        keep = None
        if "rerank" in data:
            self.check_keys(data["rerank"], _TABLE_KEYS["rerank"], "rerank")
            keep = self.limit("keep", data["rerank"].get("keep", 0.2), "rerank", "keep")
        evaluation = None
        if "evaluation" in data:
            self.check_keys(data["evaluation"], _TABLE_KEYS["evaluation"], "evaluation")
            if data["evaluation"].get("enabled", True):
                evaluation = dict(data["evaluation"].get("options", {}))
        stimuli = self.stimuli(data.get("stimuli"))
        seeds = self.seeds(data.get("seeds"))
        fingerprint = hashlib.sha256(json.dumps({"model": model, "seeds": seeds, "jobs": [j.key() for j in jobs]},
                                                sort_keys=True).encode()).hexdigest()
        return Sweep(name=name, model=model, catalog=catalog, seeds=seeds, encoders=encoders,
                     jobs=jobs, **execution, rerank_keep=keep, evaluation=evaluation, stimuli=stimuli, source=self.source,
                     fingerprint=fingerprint)

    def stimuli(self, table) -> dict | None:
        """``[stimuli]``: checked by ``braindive.stimuli.sweep`` (not part of the fingerprint: it makes no images)."""
        from ..stimuli.sweep import read_stimuli_table

        return read_stimuli_table(table, lambda message, key: self.fail(message, "stimuli", key))

    def seeds(self, value) -> list[int]:
        if isinstance(value, dict):
            if set(value) - {"start", "count"}:
                self.fail(f"`seeds` takes `start` and `count`, got {sorted(value)}.", "", "seeds")
            start = self.limit("seed", value.get("start", 0), "", "seeds")
            count = self.number(value.get("count", 0), int, 1, 10**7, "", "seeds", name="seeds.count")
            self.limit("seed", start + count - 1, "", "seeds")
            return list(range(start, start + count))
        if isinstance(value, list) and value:
            seeds = [self.limit("seed", s, "", "seeds") for s in value]
            if len(set(seeds)) != len(seeds):
                self.fail("`seeds` has repeated seeds.", "", "seeds")
            return seeds
        self.fail(f"`seeds` must be {{start = S, count = N}} or a list of seeds >= 0, got {value!r}.", "", "seeds")

    def execution(self, table: dict) -> dict:
        self.check_keys(table, _TABLE_KEYS["execution"], "execution")
        out = {k: self.number(v, *_EXECUTION_RANGES[k], "execution", k) for k, v in table.items() if k in _EXECUTION_RANGES}
        for flag in ("baseline", "save_activations"):
            if flag in table:
                if not isinstance(table[flag], bool):
                    self.fail(f"`execution.{flag}` must be true or false, got {table[flag]!r}.", "execution", flag)
                out[flag] = table[flag]
        return out

    def encoders(self, value, model: str):
        from ..subjects import load_subject

        if not isinstance(value, list) or not value:
            self.fail("the sweep needs at least one [[encoders]] table with `subject` and `path`.", "encoders")
        specs, subjects = [], {}
        for i, table in enumerate(value):
            self.check_keys(table, _TABLE_KEYS["encoders"], "encoders", i)
            subject_name = self.string(table.get("subject"), "encoders", "subject", i)
            path = self.string(table.get("path"), "encoders", "path", i)
            if path == DEMO and model != DEMO:
                self.fail(f"encoder path 'demo' works with model = 'demo' only, got model {model!r}.", "encoders", "path", i)
            subject_ref = subject_name if not subject_name.endswith(".npz") else str(self.base_dir / subject_name)
            try:
                subject = load_subject(subject_ref)
            except (ValueError, FileNotFoundError, KeyError) as exc:
                self.fail(f"unknown subject {subject_name!r}: {exc}", "encoders", "subject", i)
            if path != DEMO:
                local = self.base_dir / path
                path = str(local) if local.exists() else path
                self.check_space(Path(path), subject, i)
            spec = EncoderSpec(name=table.get("name") or (DEMO if path == DEMO else Path(path).name),
                               path=path, subject=subject_ref, identity=_identity(path, subject))
            if spec.name in [s.name for s in specs]:
                self.fail(f"two encoders are named {spec.name!r}; give each a distinct `name`.", "encoders", "name", i)
            specs.append(spec)
            subjects[spec] = subject
        return specs, subjects

    def check_space(self, folder: Path, subject, index: int) -> None:
        """A local encoder's voxel space must be the subject's (a Hub id is checked when a worker loads it)."""
        config = folder / "config.json"
        if not config.is_file():
            if folder.exists():
                self.fail(f"encoder folder {folder} has no config.json.", "encoders", "path", index)
            return
        cfg = json.loads(config.read_text())
        fingerprint = cfg.get("subject_fingerprint")
        if fingerprint and fingerprint != subject.fingerprint:  # identity by voxel space, not by name
            self.fail(f"encoder {folder} was fit on voxel space {fingerprint[:12]}…, but subject {subject.name!r} is "
                      f"{subject.fingerprint[:12]}…; pair each encoder with its own subject file.", "encoders",
                      "subject", index)
        theirs = (cfg.get("voxel_space"), cfg.get("n_voxels"))
        if theirs != (subject.space, subject.n_voxels):
            self.fail(f"encoder {folder} is in voxel space {theirs[0]!r} with {theirs[1]} voxels, but subject "
                      f"{subject.name!r} is {subject.space!r} with {subject.n_voxels}; pair each encoder with its "
                      "own subject.", "encoders", "subject", index)

    def targets(self, table, encoders, subjects) -> dict:
        """Per encoder: ``[(Target, target_key)]`` (keys on that encoder's subject)."""
        if not isinstance(table, dict):
            self.fail("the sweep needs a [targets] table (rois, minimize, voxels or contrasts).", "targets")
        self.check_keys(table, _TABLE_KEYS["targets"], "targets")
        found = [Target.maximize(n) for n in self.string_list(table.get("rois", []), "targets", "rois")]
        found += [Target.minimize(n) for n in self.string_list(table.get("minimize", []), "targets", "minimize")]
        files = self.string_list(table.get("voxels", []), "targets", "voxels")
        contrasts = table.get("contrasts", [])
        if not isinstance(contrasts, list):
            self.fail("`targets.contrasts` must be a list of {positive, negative, weight} tables.", "targets", "contrasts")
        for c in contrasts:
            if not isinstance(c, dict) or set(c) - {"positive", "negative", "weight"} or not {"positive", "negative"} <= set(c):
                self.fail(f"each contrast must be {{positive = ROI, negative = ROI, weight = W}}, got {c!r}.",
                          "targets", "contrasts")
            weight = self.limit("weight", c.get("weight", 1.0), "targets", "contrasts")
            try:
                found.append(Target.contrast(self.string(c["positive"], "targets", "contrasts"),
                                             self.string(c["negative"], "targets", "contrasts"), weight))
            except ValueError as exc:
                self.fail(str(exc), "targets", "contrasts")
        out = {}
        for enc in encoders:
            subject = subjects[enc]
            targets = found + [self.voxel_file(file, subject) for file in files]
            targets += self.subregion_targets(table.get("subregions", []), enc, subject)
            if not targets:
                self.fail("[targets] lists no target.", "targets")
            labels = [t.label for t in targets]
            if len(set(labels)) != len(labels):
                self.fail(f"[targets] names a target twice: {labels}.", "targets")
            out[enc] = []
            for target in targets:
                try:
                    out[enc].append((target, target_key(target, subject)))
                except ValueError as exc:
                    bad = target.region_b if target.region_b and target.region_b.split(".")[0] not in subject.roi_names \
                        else target.region_a
                    key = {"maximize": "rois", "minimize": "minimize"}.get(target.kind, "contrasts")
                    self.fail(f"unknown ROI {bad!r} for subject {subject.name!r}; known: {subject.roi_names}. ({exc})",
                              "targets", key, needle=f'"{bad}"')
        return out

    def subregion_targets(self, entries, enc: EncoderSpec, subject) -> list[Target]:
        """``subregions = [{roi = "OPA", k = 2, by = "weights", axis = ..., seed = 0, images = ..., kind = ...}]``:
        each part of the split as ``subregions.part_target`` (maximised by default; ``kind`` "minimize" or
        "contrast", part minus the rest of the region). ``by = "weights"`` reads the encoder's head from its local
        folder; ``"responses"`` predicts the voxels' responses to the images of ``images`` (a folder, or a prepared
        NSD dataset's shared images; relative to the sweep file) with the whole encoder, here on the CPU; ``"anatomy"`` bins along ``axis``."""
        from .. import subregions as sr

        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            self.fail(f"`targets.subregions` must be a list of {{{', '.join(sorted(_SUBREGION_KEYS))}}} tables.",
                      "targets", "subregions")
        found = []
        for e in entries:
            if set(e) - _SUBREGION_KEYS or "roi" not in e:
                self.fail(f"each subregion entry takes {sorted(_SUBREGION_KEYS)} (roi required), got {sorted(e)}.",
                          "targets", "subregions")
            by, kind = e.get("by", "weights"), e.get("kind", "maximize")
            if by not in sr.BY:
                self.fail(f"`subregions.by` must be one of {list(sr.BY)}, got {by!r}.", "targets", "subregions",
                          needle=f'"{by}"')
            if kind not in sr.PART_KINDS:
                self.fail(f"`subregions.kind` must be one of {list(sr.PART_KINDS)}, got {kind!r}.", "targets",
                          "subregions", needle=f'"{kind}"')
            if (by == "responses") != ("images" in e):
                self.fail("`subregions.images` (a folder of images or a prepared NSD dataset, relative to the sweep "
                          f"file) is needed with by = \"responses\" and only then; got by {by!r}.", "targets",
                          "subregions")
            k = self.number(e.get("k", 2), int, *sr.K_RANGE, "targets", "subregions", name="subregions.k")
            seed = self.limit("seed", e.get("seed", 0), "targets", "subregions")
            try:
                images = self.base_dir / self.string(e["images"], "targets", "subregions") if "images" in e else None
                split = sr.split_region(subject, self.string(e["roi"], "targets", "subregions"), k, by,
                                        encoder=_split_encoder(enc, by, subject), images=images,
                                        axis=e.get("axis", "posterior-anterior"), seed=seed)
            except (OSError, ValueError) as exc:
                self.fail(f"subregions {e!r}: {exc}", "targets", "subregions")
            found += [sr.part_target(split, i, kind) for i in range(split.k)]
        return found

    def voxel_file(self, file: str, subject) -> Target:
        path = self.base_dir / file
        try:
            voxels = np.load(path, allow_pickle=False)
            subject.check_voxels(voxels, f"voxels file {file}")
            return Target.voxel_set(voxels, name=Path(file).stem)
        except (OSError, ValueError) as exc:
            self.fail(f"voxel file {file!r}: {exc}", "targets", "voxels", needle=file)

    def settings(self, table: dict, model: str) -> list[Settings]:
        from ..pipeline import GUIDANCE_MODES, SCHEDULERS
        from ..presets import PRESETS

        self.check_keys(table, _TABLE_KEYS["settings"] | _IMAGE_SETTINGS, "settings")
        defaults = Settings.from_preset(PRESETS["demo" if model == DEMO else "sd21"])
        axes = {}
        for key in _TABLE_KEYS["settings"]:
            values = table.get(key, getattr(defaults, key))
            values = values if isinstance(values, list) else [values]
            if not values:
                self.fail(f"`settings.{key}` is an empty list.", "settings", key)
            checked = []
            for v in values:
                if key in SETTING_LIMITS:
                    checked.append(self.limit(SETTING_LIMITS[key], v, "settings", key))
                elif key == "mode" and v not in GUIDANCE_MODES:
                    self.fail(f"`settings.mode` must be one of {GUIDANCE_MODES}, got {v!r}.", "settings", key)
                elif key == "scheduler" and v not in SCHEDULERS:
                    self.fail(f"`settings.scheduler` must be one of {sorted(SCHEDULERS)}, got {v!r}.", "settings", key)
                else:
                    checked.append(v)
            axes[key] = checked
        keys = sorted(axes)
        plain = [Settings(**dict(zip(keys, combo))) for combo in itertools.product(*(axes[k] for k in keys))]
        return self.image_settings(table, plain)

    def image_settings(self, table: dict, settings: list[Settings]) -> list[Settings]:
        """``init_images = ["ref.png", "nsd:2950"]`` (files relative to the sweep file; ``nsd:<id>`` from the prepared
        NSD dataset ``nsd_dataset``) x ``strength = [0.5, 0.8]``: every setting from every start image at every
        strength; without ``init_images``, from noise (``strength`` refused). Each image is read here, once
        (``generate.StartImage``: named as written, its pixels travel with the jobs)."""
        from dataclasses import replace

        from ..generate import StartImage

        files = table.get("init_images", [])
        if not files:
            for key in ("strength", "nsd_dataset"):
                if key in table:
                    self.fail(f"`settings.{key}` needs `settings.init_images` (the images to start from).", "settings",
                              key)
            return settings
        nsd_dataset = self.string(table["nsd_dataset"], "settings", "nsd_dataset") if "nsd_dataset" in table else None
        images = {}
        for file in self.string_list(files, "settings", "init_images"):
            try:
                image = StartImage.resolve(file, base=self.base_dir, nsd_dataset=nsd_dataset)
            except (ValueError, OSError) as exc:
                self.fail(f"init image {file!r}: {exc}", "settings", "init_images", needle=file)
            if image.sha256 in images:  # the same pixels: the same image ids, twice
                self.fail(f"init images {images[image.sha256].file!r} and {file!r} have the same pixels; list each "
                          "start image once.", "settings", "init_images", needle=file)
            if image.file in {i.file for i in images.values()}:  # two absolute paths ending in the same file name
                self.fail(f"two init images are named {image.file!r} in records; give them distinct file names or "
                          "paths relative to the sweep file.", "settings", "init_images", needle=file)
            images[image.sha256] = image
        strengths = table.get("strength", [1.0])
        strengths = [self.limit("strength", v, "settings", "strength")
                     for v in (strengths if isinstance(strengths, list) else [strengths])]
        return [replace(s, init_image=image, strength=v)
                for s in settings for image in images.values() for v in strengths]


def _variant(settings: Settings, key: str) -> str:
    """``key=value`` of one varying setting (a prompt quoted, a start image by its name in the sweep file)."""
    value = getattr(settings, key)
    return f"{key}={value!r}" if key == "prompt" else f"{key}={value.file}" if key == "init_image" else f"{key}={value}"


def _split_encoder(enc: EncoderSpec, by: str, subject):
    """What ``subregions.split_region`` needs of the encoder: its ``[n_voxels, d]`` head weights for ``"weights"``
    (read from a local folder, the demo's included, without the tower), the whole encoder on the CPU for
    ``"responses"``, nothing for ``"anatomy"``."""
    from safetensors.numpy import load_file

    from ..demo import ASSET_ENCODER
    from ..encoders import HEAD_NAME, load_encoder

    folder = ASSET_ENCODER if enc.path == DEMO else Path(enc.path)
    if by == "responses":
        return load_encoder(str(folder) if enc.path == DEMO else enc.path, subject=subject).eval()
    if by != "weights":
        return None
    if not (folder / HEAD_NAME).is_file():
        raise ValueError(f"subregions by weights need a local encoder folder with {HEAD_NAME}; {enc.path!r} has none.")
    return load_file(str(folder / HEAD_NAME))["weight"]


def _identity(path: str, subject) -> str:
    """The encoder's identity in image ids (``generate.encoder_identity``; the demo's bundled checkpoint)."""
    from ..demo import ASSET_ENCODER

    return encoder_identity(path, subject, ASSET_ENCODER if path == DEMO else None)
