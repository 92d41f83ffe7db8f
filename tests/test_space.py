"""The Hugging Face Space builds: front matter pins Python and Gradio, and the requirements resolve there.

Two pin sets: requirements.txt (Python 3.11, CPU or dedicated-GPU Spaces) and requirements-zerogpu.txt
(ZeroGPU: Python 3.10.13 and one of its listed PyTorch versions), which `ui.space_bundle --zerogpu`
puts into a Space folder. The resolution checks ask the package registry (PyPI) which wheels exist for
the Space's Python and platform; they are skipped when the registry cannot be reached. pip evaluates
environment markers (``; python_version < "3.11"``) for the Python running it, not for
``--python-version``, so a marker-only dependency of a 3.10 install is not checked here.
"""
import ast
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ui import zerogpu
from ui.space_bundle import main as bundle_main
from ui.space_bundle import write_space

REPO = Path(__file__).resolve().parents[1]
SPACE_PYTHON = "3.11"
# a Space runs Debian (glibc 2.36): every manylinux wheel tag up to glibc 2.35 qualifies
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)] + ["manylinux2014_x86_64",
                                                                              "manylinux2010_x86_64", "manylinux1_x86_64"]
SOURCE_ONLY = {"pycortex"}  # published as an sdist only: built on the Space (its wheels-only deps are checked below)
ZEROGPU_ONLY = {"spaces", "tomli"}  # ZeroGPU's decorator; the tomllib backport for Python 3.10


def _front_matter(readme: Path = REPO / "README.md") -> dict:
    block = re.match(r"---\n(.*?)\n---\n", readme.read_text(), re.S)
    assert block, f"{readme} must start with the Space's YAML front matter"
    return dict(line.split(": ", 1) for line in block.group(1).splitlines() if ": " in line)


def _pins(name: str = "requirements.txt") -> dict:
    lines = (REPO / name).read_text().splitlines()
    return dict(line.split("==") for line in lines if "==" in line and not line.startswith("#"))


def test_front_matter_pins_the_python_and_gradio_the_requirements_need():
    meta, pins = _front_matter(), _pins()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert meta["python_version"].strip("'\"") == SPACE_PYTHON
    assert meta["sdk_version"] == pins["gradio"]


def test_zerogpu_pins_are_the_project_packages_with_a_listed_torch():
    main, zero = _pins(), _pins("requirements-zerogpu.txt")
    assert set(zero) == set(main) | ZEROGPU_ONLY
    assert zero["torch"] in zerogpu.TORCH_VERSIONS
    assert int(zero["gradio"].split(".")[0]) >= 4  # ZeroGPU needs Gradio 4+
    # torchvision 0.N goes with torch 2.(N-15) since torch 2.0 / torchvision 0.15
    assert int(zero["torchvision"].split(".")[1]) == int(zero["torch"].split(".")[1]) + 15


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _assert_resolves(pins: dict, python_version: str, tmp_path: Path) -> None:
    """Every pin resolves, wheels only, for ``python_version`` on the Space's platforms; source-only pins have sdists."""
    wheels = tmp_path / "requirements-wheels.txt"
    wheels.write_text("".join(f"{name}=={version}\n" for name, version in pins.items() if name not in SOURCE_ONLY))
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--python-version",
           python_version, "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS), "-r", str(wheels),
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


@pytest.mark.skipif(not _registry_reachable(), reason="package registry (pypi.org) unreachable")
def test_requirements_resolve_for_the_space_python_and_platform(tmp_path):
    _assert_resolves(_pins(), SPACE_PYTHON, tmp_path)


@pytest.mark.skipif(not _registry_reachable(), reason="package registry (pypi.org) unreachable")
def test_zerogpu_requirements_resolve_for_zerogpu_python_and_platform(tmp_path):
    _assert_resolves(_pins("requirements-zerogpu.txt"), zerogpu.PYTHON, tmp_path)


def _project_files() -> set:
    """Every file git does not ignore, tracked or not."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: git's own list of project files is the expectation")
    return {Path(f) for f in listed if f and (REPO / f).is_file()}  # not a worktree's .venv symlink


def test_zerogpu_bundle_is_the_project_with_zerogpu_front_matter_and_pins(tmp_path):
    out = tmp_path / "space"
    assert bundle_main(["--zerogpu", str(out)]) == 0
    meta, pins = _front_matter(out / "README.md"), _pins("requirements-zerogpu.txt")
    assert meta["python_version"].strip("'\"") == "3.10.13" and meta["sdk_version"] == pins["gradio"]
    assert meta["suggested_hardware"] == "zero-a10g" and meta["app_file"] == "app.py"
    assert (out / "requirements.txt").read_text() == (REPO / "requirements-zerogpu.txt").read_text()
    readme, bundled = (REPO / "README.md").read_text(), (out / "README.md").read_text()
    assert bundled.split("\n---\n", 1)[1] == readme.split("\n---\n", 1)[1]  # the page itself is unchanged
    assert {p.relative_to(out) for p in out.rglob("*") if p.is_file()} == _project_files()
    assert (out / "braindive" / "assets" / "demo-sd").is_dir()  # the demo's package data
    assert (out / "app.py").read_bytes() == (REPO / "app.py").read_bytes()


def test_plain_bundle_keeps_readme_and_requirements(tmp_path):
    out = write_space(tmp_path / "space")
    for name in ("README.md", "requirements.txt"):
        assert (out / name).read_bytes() == (REPO / name).read_bytes()


def test_bundle_refuses_an_existing_or_inner_folder_and_an_unlisted_torch(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_:
        bundle_main(["--zerogpu", str(tmp_path / "taken")])
    assert exit_.value.code == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="outside the project"):
        write_space(REPO / "outputs" / "space", zerogpu_variant=True)
    # a project whose ZeroGPU pins name a torch ZeroGPU does not list: nothing is written
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("---\nsdk: gradio\n---\n# x\n")
    (project / "requirements-zerogpu.txt").write_text("torch==2.3.0\ngradio==6.31.0\n")
    with pytest.raises(ValueError, match=r"`torch` in .*requirements-zerogpu.txt must be one of .*got '2.3.0'"):
        write_space(tmp_path / "space", zerogpu_variant=True, root=project)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "taken"]


# stdlib names that Python 3.10 lacks: module -> names (builtins under "builtins")
NEWER_THAN_310 = {
    "typing": {"Self", "Never", "LiteralString", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "get_overloads", "clear_overloads",
               "override", "TypeAliasType", "get_protocol_members", "is_protocol", "ReadOnly", "TypeIs"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member", "nonmember", "global_enum"},
    "datetime": {"UTC"}, "asyncio": {"TaskGroup", "timeout", "timeout_at", "Runner", "Barrier"},
    "hashlib": {"file_digest"}, "contextlib": {"chdir"}, "operator": {"call"}, "math": {"cbrt", "exp2", "sumprod"},
    "itertools": {"batched"}, "logging": {"getLevelNamesMapping"}, "sys": {"exception"},
    "builtins": {"ExceptionGroup", "BaseExceptionGroup"},
}
NEW_MODULES = {"tomllib"}  # allowed only in a try whose except catches ImportError (a backport in the handler)


def _newer_than_310(source: str) -> list:
    """Python 3.11+ syntax and stdlib names used in ``source``, as readable strings."""
    try:
        tree = ast.parse(source, feature_version=(3, 10))
    except SyntaxError as exc:
        return [f"syntax: {exc.msg} (line {exc.lineno})"]
    aliases, guarded, found = {}, set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id in {"ImportError",
                                             "ModuleNotFoundError"} for h in node.handlers):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
                if a.name in NEW_MODULES and id(node) not in guarded:
                    found.append(f"import {a.name} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom):
            if node.module in NEW_MODULES and id(node) not in guarded:
                found.append(f"from {node.module} import (line {node.lineno})")
            found += [f"{node.module}.{a.name} (line {node.lineno})" for a in node.names
                      if a.name in NEWER_THAN_310.get(node.module, ())]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if node.attr in NEWER_THAN_310.get(module, ()) and module != "builtins":
                found.append(f"{module}.{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.Name) and node.id in NEWER_THAN_310["builtins"]:
            found.append(f"{node.id} (line {node.lineno})")
    return found


@pytest.mark.parametrize("source, finding", [
    ("import tomllib\n", "import tomllib (line 1)"),
    ("from typing import Self\n", "typing.Self (line 1)"),
    ("import datetime as dt\nnow = dt.datetime.now(dt.UTC)\n", "datetime.UTC (line 2)"),
    ("try:\n    pass\nexcept* OSError:\n    pass\n", "syntax:"),  # message differs by Python
    ("raise ExceptionGroup('x', [])\n", "ExceptionGroup (line 1)"),
])
def test_the_310_check_finds_311_code(source, finding):
    assert any(f.startswith(finding) for f in _newer_than_310(source)), _newer_than_310(source)


def test_the_310_check_accepts_a_guarded_backport():
    source = "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\nimport datetime\n"
    assert _newer_than_310(source + "datetime.timezone.utc\n") == []


def test_every_python_file_runs_on_zerogpu_python():
    files = [REPO / f for f in _project_files() if f.suffix == ".py"]
    assert len(files) > 100 and REPO / "braindive" / "batch" / "sweep.py" in files
    problems = {str(p.relative_to(REPO)): found for p in files if (found := _newer_than_310(p.read_text()))}
    assert problems == {}
