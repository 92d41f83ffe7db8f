"""App settings: command-line flags override environment variables override defaults."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

__all__ = ["Settings", "parse_settings", "ENV_PREFIX"]

ENV_PREFIX = "BRAINDIVE_"


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
    max_steps: int = 100
    max_images: int = 8
    concurrency: int = 1          # generations running at once on the one model (GPU queue)
    queue_size: int = 16
    share: bool = False

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
    def exports_dir(self) -> Path:
        """ZIP exports of the History tab (only the latest few are kept)."""
        return Path(self.data_dir) / "exports"


def _env_default(field, environ) -> object:
    raw = environ.get(ENV_PREFIX + field.name.upper())
    if raw is None:
        return field.default
    if field.type in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if field.type in ("int", int):
        return int(raw)
    return raw


def parse_settings(argv=None, environ=None) -> Settings:
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description="BrainDiVE Studio web app")
    for field in fields(Settings):
        default = _env_default(field, environ)
        if field.name == "host" and "SPACE_ID" in environ and ENV_PREFIX + "HOST" not in environ:
            default = "0.0.0.0"  # a Hugging Face Space serves on all interfaces
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true", default=default)
        else:
            kind = int if field.type in ("int", int) else str
            parser.add_argument(flag, type=kind, default=default,
                                help=f"(env {ENV_PREFIX}{field.name.upper()}, default {field.default!r})")
    return Settings(**vars(parser.parse_args(argv)))
