"""App settings: command-line flags override environment variables override defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["Settings", "parse_settings", "ENV_PREFIX", "HISTORY_MODES"]

ENV_PREFIX = "BRAINDIVE_"
HISTORY_MODES = ("shared", "session", "account")
# Gradio's own variables (what Spaces and Gradio users set): used when the BRAINDIVE_ one is absent
_GRADIO_ENV = {"host": "GRADIO_SERVER_NAME", "port": "GRADIO_SERVER_PORT"}


@dataclass
class Settings:
    """Everything the app can be told. Environment variable: ``BRAINDIVE_<NAME>`` (upper case)."""

    preset: str = "auto"          # auto | demo | sd21 ; auto = sd21 with CUDA and an encoder, else demo
    encoder: str = ""             # encoder checkpoint folder or Hub id for the sd21 preset
    model: str = "stabilityai/stable-diffusion-2-1-base"
    subject: str = ""             # subject .npz for the sd21 preset's encoder
    data_dir: str = "outputs"     # catalog, trained encoders, training logs
    host: str = "127.0.0.1"
    port: int = 7860
    image_size: int = 0           # generated image side in pixels; 0 = the model's default
    max_steps: int = 200          # this server's caps (braindive.presets.LIMITS; lower values only tighten them)
    max_images: int = 8
    max_prompt: int = 300         # prompt characters
    concurrency: int = 1          # generations running at once (one pipeline each); the rest wait in a queue
    queue_size: int = 16          # requests waiting for a pipeline
    max_encoders: int = 4         # encoders kept loaded (least recently used evicted)
    history: str = "shared"       # shared (lab server) | session | account ; "session" on a Space
    train_roots: str = ""         # extra folders (os.pathsep-separated) the Train tab may read datasets/backbones from
    max_upload_mb: float = 10.0   # largest file a visitor may upload (Gradio's max_file_size), in MB
    gpu_step_seconds: float = 0.5  # ZeroGPU budget per denoising step (guided or unguided) of one image
    share: bool = False

    def __post_init__(self):
        checks = [(self.history in HISTORY_MODES, f"`history` must be one of {HISTORY_MODES}, got {self.history!r}."),
                  (self.concurrency >= 1, f"`concurrency` must be at least 1, got {self.concurrency}."),
                  (self.queue_size >= 0, f"`queue_size` must be at least 0, got {self.queue_size}."),
                  (self.max_encoders >= 1, f"`max_encoders` must be at least 1, got {self.max_encoders}."),
                  (0 < self.max_upload_mb <= 1024, f"`max_upload_mb` must be from 0 to 1024, got {self.max_upload_mb}.")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def catalog_dir(self) -> Path:
        return Path(self.data_dir) / "catalog"

    @property
    def models_dir(self) -> Path:
        return Path(self.data_dir) / "encoders"

    @property
    def jobs_dir(self) -> Path:
        return Path(self.data_dir) / "jobs"

    @property
    def reports_dir(self) -> Path:
        """Evaluation reports of training jobs (R² flatmap PNG + JSON): served to the Train tab."""
        return Path(self.data_dir) / "reports"

    @property
    def owner_key_path(self) -> Path:
        """The secret that keys History's owner hashes (``Service.owner_of``): in the data folder, never served."""
        return Path(self.data_dir) / "owner.key"

    @property
    def exports_dir(self) -> Path:
        """ZIP exports of the History tab (only the latest few are kept)."""
        return Path(self.data_dir) / "exports"

    @property
    def allowed_roots(self) -> list[Path]:
        """Folders the Train tab may read datasets and backbones from: the data folder and ``train_roots``."""
        extra = [Path(p) for p in self.train_roots.split(os.pathsep) if p.strip()]
        return [Path(self.data_dir).resolve(), *(p.resolve() for p in extra)]


_CASTS = {"bool": lambda raw: raw.strip().lower() in ("1", "true", "yes", "on"), "int": int, "float": float}


def _type_name(field) -> str:
    return field.type if isinstance(field.type, str) else field.type.__name__


def _env_default(field, environ) -> object:
    raw = environ.get(ENV_PREFIX + field.name.upper())
    if raw is None and field.name in _GRADIO_ENV:
        raw = environ.get(_GRADIO_ENV[field.name])
    if raw is None:
        if field.name == "host" and "SPACE_ID" in environ:
            return "0.0.0.0"  # a Hugging Face Space serves on all interfaces
        if field.name == "history" and "SPACE_ID" in environ:
            return "session"  # a public Space: each visitor sees only their own results
        return field.default
    try:
        return _CASTS.get(_type_name(field), str)(raw)
    except ValueError:
        raise SystemExit(f"Environment variable for `{field.name}` must be a {_type_name(field)}, got {raw!r}.") from None


def parse_settings(argv=None, environ=None) -> Settings:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description="BrainDiVE Studio web app")
    for field in fields(Settings):
        default = _env_default(field, environ)
        flag = "--" + field.name.replace("_", "-")
        kind = _type_name(field)
        if kind == "bool":
            parser.add_argument(flag, action="store_true", default=default)
        else:
            parser.add_argument(flag, type=_CASTS.get(kind, str), default=default,
                                help=f"(env {ENV_PREFIX}{field.name.upper()}, default {field.default!r})")
    try:
        return Settings(**vars(parser.parse_args(argv)))
    except ValueError as exc:
        parser.error(str(exc))
