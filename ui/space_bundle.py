"""Write a folder to push as a Hugging Face Space: ``python -m ui.space_bundle [--zerogpu] OUT``.

The folder is this project without what git ignores (``.venv``, ``outputs``, caches). With ``--zerogpu``
two files differ from the project's: ``requirements.txt`` is ``requirements-zerogpu.txt`` (ZeroGPU's
Python and one of its PyTorch versions) and README.md's front matter names that Python, that pin set's
Gradio and the ZeroGPU hardware. Nothing is written unless the whole folder is complete.
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

from braindive.cache import private_tmp

from . import zerogpu

__all__ = ["write_space", "read_pins", "zerogpu_front_matter", "ROOT", "ZEROGPU_PINS", "main"]

ROOT = Path(__file__).resolve().parents[1]
ZEROGPU_PINS = ROOT / "requirements-zerogpu.txt"
_IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", "outputs", ".cache",
                                  ".whl", ".gl", "test-artifacts")  # .gitignore's entries and .git
_FRONT_MATTER = re.compile(r"\A---\n(.*?\n)---\n", re.S)


def read_pins(path: Path) -> dict:
    """``{package: version}`` of a requirements file of ``name==version`` lines (comments and blanks skipped)."""
    pins = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{number}: every requirement must be pinned as `name==version`, got {line!r}.")
        pins[name.strip()] = version.strip()
    return pins


def _check_zerogpu_pins(pins: dict, path: Path) -> None:
    """ZeroGPU runs only its listed PyTorch versions and Gradio 4+."""
    if pins.get("torch") not in zerogpu.TORCH_VERSIONS:
        raise ValueError(f"`torch` in {path} must be one of ZeroGPU's versions {', '.join(zerogpu.TORCH_VERSIONS)} "
                         f"({zerogpu.DOCS}), got {pins.get('torch')!r}.")
    if not re.match(r"([4-9]|\d{2,})\.", pins.get("gradio", "")):
        raise ValueError(f"`gradio` in {path} must be pinned to a version >= 4 for ZeroGPU, got {pins.get('gradio')!r}.")


def zerogpu_front_matter(readme: str, gradio_version: str) -> str:
    """``readme`` with its Space front matter set to ZeroGPU's Python, ``gradio_version`` and ZeroGPU hardware."""
    block = _FRONT_MATTER.match(readme)
    if not block:
        raise ValueError("README.md must start with the Space's YAML front matter (a `---` line).")
    settings = {"sdk_version": gradio_version, "python_version": f'"{zerogpu.PYTHON}"',
                "suggested_hardware": "zero-a10g"}  # the Hub's name for ZeroGPU hardware
    lines = []
    for line in block.group(1).splitlines():
        key = line.split(":", 1)[0]
        lines.append(f"{key}: {settings.pop(key)}" if key in settings else line)
    lines += [f"{key}: {value}" for key, value in settings.items()]
    return "---\n" + "\n".join(lines) + "\n---\n" + readme[block.end():]


def write_space(out: Path, zerogpu_variant: bool = False, root: Path = ROOT) -> Path:
    """Write the Space folder ``out`` (which must not exist yet, outside ``root``); returns ``out``."""
    out, root = Path(out).resolve(), Path(root).resolve()
    if out.exists():
        raise FileExistsError(f"`OUT` {out} already exists; name a new folder.")
    if out.is_relative_to(root):
        raise ValueError(f"`OUT` {out} must be outside the project folder {root}.")
    if zerogpu_variant:
        pins_path = root / ZEROGPU_PINS.name
        pins = read_pins(pins_path)
        _check_zerogpu_pins(pins, pins_path)
        readme = zerogpu_front_matter((root / "README.md").read_text(), pins["gradio"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tmp(out)
    try:
        shutil.copytree(root, tmp, ignore=_IGNORED)
        if zerogpu_variant:
            (tmp / "README.md").write_text(readme)
            shutil.copyfile(pins_path, tmp / "requirements.txt")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.space_bundle", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to create (must not exist)")
    parser.add_argument("--zerogpu", action="store_true",
                        help=f"ZeroGPU hardware: Python {zerogpu.PYTHON} and requirements-zerogpu.txt")
    args = parser.parse_args(argv)
    try:
        out = write_space(args.out, zerogpu_variant=args.zerogpu)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    hardware = "ZeroGPU" if args.zerogpu else "CPU or a dedicated GPU"
    print(f"Space folder written: {out}; push it to a Space repository and choose {hardware} hardware.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
