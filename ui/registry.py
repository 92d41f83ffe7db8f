"""Model registry: the diffusion backend, the encoders and the subjects they belong to.

Encoders are *discovered* from their ``config.json`` only (listing never loads weights), loaded on
first use, and kept in a least-recently-used set of ``Settings.max_encoders``. Encoders of one
backbone share one frozen image tower (only the linear heads differ). An encoder is matched to its
subject by the voxel-space fingerprint its config records (``subject_fingerprint``); configs written
before fingerprints existed fall back to the subject's name. Subjects are listed by label
(``"subj01 · func1pt8mm"``), so two spaces of one person appear side by side.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

import braindive as bd
from braindive.encoders import CONFIG_NAME, SUBJECT_NAME
from braindive.generate import encoder_identity
from braindive.presets import PRESETS

__all__ = ["ModelRegistry", "Backend", "ServiceError", "DEMO_ENCODER", "DEMO_VOLUME_ENCODER", "subject_label",
           "MAX_NAME"]

log = logging.getLogger(__name__)
DEMO_ENCODER = "demo"
DEMO_VOLUME_ENCODER = "demo-fullhead"  # the demo encoder on the volume subject S1-fullhead (derived, cached)
MAX_NAME = 100  # characters of an encoder name or path a request may carry


class ServiceError(Exception):
    """A problem to show to the user; the app keeps running."""


@dataclass
class Backend:
    """The diffusion pipelines (one per concurrent generation, same weights) and how to call them."""

    pipes: list
    name: str
    label: str
    defaults: dict

    @property
    def pipe(self) -> bd.BrainDiVEPipeline:
        return self.pipes[0]


def subject_label(subject: bd.Subject) -> str:
    """How a subject is listed: its label (name · space) where the library provides one, else its name."""
    return getattr(subject, "label", "") or subject.name


class ModelRegistry:
    def __init__(self, settings):
        self.settings = settings
        self._backend: Backend | None = None
        self._demo_encoder: bd.BrainEncoder | None = None
        self._encoders: OrderedDict[str, bd.BrainEncoder] = OrderedDict()  # least recently used first
        self._towers = bd.encoders.TowerCache()  # encoders of one backbone share its frozen tower
        self._identities: dict[tuple, str] = {}
        self._subjects: dict[str, bd.Subject] = {}  # by name, label and file path
        self._configs: dict[Path, tuple[float, dict]] = {}  # config.json -> (mtime, contents)
        self._volume_folder: Path | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ backend

    @property
    def preset(self) -> str:
        if self.settings.preset != "auto":
            return self.settings.preset
        return "sd21" if torch.cuda.is_available() and self.settings.encoder else "demo"

    def backend(self) -> Backend:
        with self._lock:
            if self._backend is None:
                self._backend = self._load_backend()
            return self._backend

    def _load_backend(self) -> Backend:
        n = self.settings.concurrency
        if self.preset == "demo":
            loaded = PRESETS["demo"].load("cpu")
            self._demo_encoder = loaded.encoder
            self._remember_subject(loaded.subject)
            extra = [bd.demo.configure_fast(PRESETS["demo"].pipeline("cpu", str(bd.demo.diffusion_bundle_path())))
                     for _ in range(n - 1)]
            return Backend([loaded.pipe, *extra], loaded.model_name, loaded.label, _pipeline_defaults(PRESETS["demo"]))
        if not self.settings.encoder:
            raise ServiceError("The sd21 preset needs an encoder: start the app with --encoder PATH_OR_HUB_ID "
                               "(train one in the Train tab or with `python -m training.train_encoder`).")
        cuda = torch.cuda.is_available()
        pipes = [PRESETS["sd21"].pipeline("cuda" if cuda else "cpu", self.settings.model) for _ in range(n)]
        return Backend(pipes, self.settings.model, f"{self.settings.model} + your encoder", _pipeline_defaults(PRESETS["sd21"]))

    # ------------------------------------------------------------------ encoders: discovery (config.json only)

    def encoder_names(self) -> list[str]:
        names = [DEMO_ENCODER, DEMO_VOLUME_ENCODER] if self.preset == "demo" else []
        if self.settings.encoder:
            names.append(self.settings.encoder)
        models = self.settings.models_dir
        if models.is_dir():  # a trained encoder cannot hide a built-in one of the same name
            names += sorted(p.name for p in models.iterdir() if (p / CONFIG_NAME).is_file() and p.name not in names)
        return names

    def folder(self, name: str) -> Path:
        """The checkpoint folder of a listed encoder (a Hub id is fetched: config and head only)."""
        if not isinstance(name, str) or len(name) > MAX_NAME or name not in self.encoder_names():
            shown = name if not isinstance(name, str) or len(name) <= 60 else name[:60] + "…"
            raise ServiceError(f"Unknown encoder {shown!r}; available: {self.encoder_names()}.")
        if name == DEMO_ENCODER:
            return bd.demo.ASSET_ENCODER
        if name == DEMO_VOLUME_ENCODER and self.preset == "demo":
            return self._volume_demo_folder()
        if name != self.settings.encoder:
            return self.settings.models_dir / name
        try:
            return bd.encoders.resolve_checkpoint(name)
        except FileNotFoundError as exc:
            raise ServiceError(f"Could not load encoder {name!r}: {exc}") from exc

    def _volume_demo_folder(self) -> Path:
        """The demo encoder on S1-fullhead: derived from the S1 one once (seconds), then read from the cache."""
        with self._lock:
            if self._volume_folder is None:
                try:
                    self._volume_folder = bd.demo.volume_encoder_folder()
                except (ValueError, OSError, RuntimeError, KeyError) as exc:
                    raise ServiceError(f"Could not derive encoder {DEMO_VOLUME_ENCODER!r}: {exc}") from exc
            return self._volume_folder

    def config(self, name: str) -> dict:
        """The encoder's ``config.json`` as a dict (re-read when the file changes)."""
        path = self.folder(name) / CONFIG_NAME
        if name == DEMO_ENCODER and not path.is_file():  # the seeded demo encoder has no folder
            self.backend()
            return json.loads(self._demo_encoder.config.to_json())
        try:
            mtime = path.stat().st_mtime
            cached = self._configs.get(path)
            if cached is None or cached[0] != mtime:
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or "subject" not in data:
                    raise ValueError("it has no `subject`")
                self._configs[path] = cached = (mtime, data)
        except (OSError, ValueError) as exc:
            raise ServiceError(f"Could not load encoder {name!r}: config {path} is corrupt or unreadable ({exc}).") from exc
        return cached[1]

    def subject_of(self, encoder_name: str) -> bd.Subject:
        """The encoder's subject: built in by name, else ``--subject``, else the file in its checkpoint.

        With a recorded ``subject_fingerprint`` the subject must have that fingerprint, whatever its name.
        """
        config = self.config(encoder_name)
        fingerprint = config.get("subject_fingerprint")
        wanted = config.get("subject_label") or config["subject"]
        candidates = []
        if config["subject"] in bd.available_subjects():
            candidates.append(config["subject"])
        recorded = None
        if encoder_name != DEMO_ENCODER:
            recorded = self.folder(encoder_name) / config.get("training", {}).get("subject_file", SUBJECT_NAME)
        candidates += [str(s) for s in (self.settings.subject, recorded) if s and Path(s).is_file()]
        mismatched = []
        for source in candidates:
            subject = self.subject(source)
            if fingerprint and getattr(subject, "fingerprint", None):
                if subject.fingerprint == fingerprint:
                    return subject
                mismatched.append(subject_label(subject))
            elif subject.name == config["subject"]:
                return subject
            else:
                mismatched.append(subject_label(subject))
        if mismatched:
            raise ServiceError(f"Encoder {encoder_name!r} was fit on {wanted!r}, a different voxel space from "
                               f"{', '.join(map(repr, mismatched))}: pass the subject file it was trained on with --subject.")
        raise ServiceError(f"Encoder {encoder_name!r} is for subject {config['subject']!r}, which is not built in and "
                           f"has no subject file ({recorded} is missing): start the app with --subject SUBJECT.npz "
                           "(written by training.prepare_nsd).")

    def subject(self, key: str) -> bd.Subject:
        """A subject by label, built-in name, or file path."""
        with self._lock:
            if key not in self._subjects:
                try:
                    subject = bd.load_subject(key)
                except (ValueError, FileNotFoundError, OSError) as exc:
                    raise ServiceError(str(exc)) from exc
                self._subjects[key] = subject
                self._remember_subject(subject)
            return self._subjects[key]

    def _remember_subject(self, subject: bd.Subject) -> None:
        for key in (subject.name, subject_label(subject)):
            self._subjects.setdefault(key, subject)

    def subject_names(self) -> list[str]:
        """Labels of the subjects some encoder can be used with."""
        labels = set()
        for name in self.encoder_names():
            try:
                labels.add(subject_label(self.subject_of(name)))
            except ServiceError as exc:
                log.warning("skipping encoder %s: %s", name, exc)
        return sorted(labels)

    def subject_in_space(self, name: str, fingerprint: str = "") -> bd.Subject:
        """A subject of voxel space ``fingerprint`` (any encoder's, or loaded by ``name``); by name when it is ""."""
        if not fingerprint:
            return self.subject(name)
        candidates = []
        for encoder_name in self.encoder_names():
            try:
                candidates.append(self.subject_of(encoder_name))
            except ServiceError:
                continue
        try:
            candidates.append(self.subject(name))
        except ServiceError:
            pass
        for subject in candidates:
            if subject.fingerprint == fingerprint:
                return subject
        raise ServiceError(f"No subject of voxel space {fingerprint[:12]}… ({name!r}) is available in this app: "
                           "load the encoder or subject file of that space.")

    def encoders_for(self, label: str) -> list[str]:
        found = []
        for name in self.encoder_names():
            try:
                subject = self.subject_of(name)
            except ServiceError:
                continue
            if label in (subject_label(subject), subject.name):
                found.append(name)
        return found

    # ------------------------------------------------------------------ encoders: loading (LRU, shared towers)

    def encoder(self, name: str) -> bd.BrainEncoder:
        with self._lock:
            if name == DEMO_ENCODER and self.preset == "demo":
                self.backend()
                return self._demo_encoder  # always needed: never evicted
            if name in self._encoders:
                self._encoders.move_to_end(name)
                return self._encoders[name]
            folder = self.folder(name)
            try:
                encoder = self._load(folder)
            except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
                raise ServiceError(f"Could not load encoder {name!r}: {exc}") from exc
            self._encoders[name] = encoder
            while len(self._encoders) > self.settings.max_encoders:
                evicted, _ = self._encoders.popitem(last=False)
                log.info("unloaded encoder %s (least recently used)", evicted)
            return encoder

    def loaded_encoders(self) -> list[str]:
        return list(self._encoders)

    def live_towers(self) -> int:
        """Image towers currently alive (shared by every loaded encoder of one backbone)."""
        return len(self._towers)

    def _load(self, folder: Path) -> bd.BrainEncoder:
        return self._towers.load(folder)

    def identity(self, name: str) -> str:
        """The encoder's identity in baseline keys and image ids (``braindive.generate.encoder_identity``)."""
        subject = self.subject_of(name)
        folder = self.folder(name)
        config = folder / CONFIG_NAME
        key = (str(folder), subject.fingerprint, config.stat().st_mtime_ns if config.is_file() else 0)
        with self._lock:
            if key not in self._identities:
                self._identities[key] = encoder_identity(name, subject, folder)
            return self._identities[key]


def _pipeline_defaults(preset) -> dict:
    """The preset's defaults the app uses (pipeline argument names)."""
    return {k: preset.defaults[k] for k in ("height", "width", "num_inference_steps", "brain_guidance_scale", "sag_scale")}
