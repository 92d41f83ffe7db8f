"""The Hugging Face Space builds: front matter pins Python and Gradio, and the requirements resolve there.

The resolution check asks the package registry (PyPI) which wheels exist for the Space's Python and
platform; it is skipped when the registry cannot be reached.
"""
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPACE_PYTHON = "3.11"
# a Space runs Debian (glibc 2.36): every manylinux wheel tag up to glibc 2.35 qualifies
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + ["manylinux2014_x86_64",
                                                                              "manylinux2010_x86_64", "manylinux1_x86_64"]
SOURCE_ONLY = {"pycortex"}  # published as an sdist only: built on the Space (its wheels-only deps are checked below)


def _front_matter() -> dict:
    text = (REPO / "README.md").read_text()
    block = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert block, "README.md must start with the Space's YAML front matter"
    return dict(line.split(": ", 1) for line in block.group(1).splitlines() if ": " in line)


def _pins() -> dict:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_front_matter_pins_the_python_and_gradio_the_requirements_need():
    meta, pins = _front_matter(), _pins()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["python_version"].strip("'\"") == SPACE_PYTHON
    assert meta["sdk_version"] == pins["gradio"]


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _registry_reachable(), reason="package registry (pypi.org) unreachable")
def test_requirements_resolve_for_the_space_python_and_platform(tmp_path):
    pins = _pins()
    wheels = tmp_path / "requirements-wheels.txt"
    wheels.write_text("".join(f"{name}=={version}\n" for name, version in pins.items() if name not in SOURCE_ONLY))
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--python-version",
           SPACE_PYTHON, "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS), "-r", str(wheels),
           "--report", str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name, version in pins.items():
        if name not in SOURCE_ONLY:
            assert resolved[name.lower().replace("_", "-")] == version
    for name in SOURCE_ONLY:  # the sdist exists for that version (its metadata is read, not built for the platform)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"--no-binary={name}", "--quiet",
                               "-d", str(tmp_path / "sdists"), f"{name}=={pins[name]}"],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
