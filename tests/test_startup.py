"""A fast CLI: ``import braindive`` and ``python -m braindive --help`` load no heavy library (torch, diffusers, ...)."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "cortex", "gradio", "scipy", "PIL")


def imported_modules(*args: str) -> tuple[set, str]:
    """Top-level modules imported by ``python -X importtime ARGS`` (from the interpreter's own import log)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return modules, proc.stdout


@pytest.mark.parametrize("args", [("-m", "braindive", "--help"), ("-m", "braindive", "generate", "--help"),
                                  ("-m", "braindive", "stimuli", "--help"),
                                  ("-c", "import braindive; braindive.__version__")])
def test_help_and_bare_import_load_no_heavy_module(args):
    modules, stdout = imported_modules(*args)
    assert "braindive" in modules and not modules & set(HEAVY), sorted(modules & set(HEAVY))
    if "--help" in args:
        assert "usage: python -m braindive" in stdout


def test_lazy_names_resolve_to_the_defining_modules():
    modules, stdout = imported_modules("-c", "import braindive as bd; print(bd.Objective.__module__, "
                                       "bd.load_subject.__module__, bd.encoders.__name__, bd.demo.__name__)")
    assert stdout.split() == ["braindive.objectives", "braindive.subjects", "braindive.encoders", "braindive.demo"]
    assert "torch" in modules  # touching a name imports what it needs
    proc = subprocess.run([sys.executable, "-c", "import braindive; braindive.no_such_name"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert "module 'braindive' has no attribute 'no_such_name'" in proc.stderr
