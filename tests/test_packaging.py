"""The installable package: pins, package data, the demo from an installed copy, and Ray workers that get the
code through ``runtime_env`` (a local instance and a two-node cluster), never through ``PYTHONPATH``."""
import ast
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (ZeroGPU)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins(text: str) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return dict(line.split("==") for line in lines if line)


def _name(requirement: str) -> str:
    return requirement.split("==")[0].lower().replace("_", "-")


def test_pyproject_pins_are_requirements_pins():
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    assert all("==" in r for r in declared), declared
    pins = {_name(k): v for k, v in _pins((REPO / "requirements.txt").read_text()).items()}
    assert {_name(r): r.split("==")[1] for r in declared} == pins  # each pin once, same version
    assert len(declared) == len(pins)


def test_every_third_party_import_of_the_package_is_a_runtime_dependency():
    runtime = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = {"tomli"}  # the sweep parser's fallback on Python 3.10 (ZeroGPU), imported only there
    transitive = {"huggingface-hub"}  # diffusers' and transformers' own dependency (hub downloads)
    providers = packages_distributions()
    missing = set()
    for root in ("braindive", "training"):
        for path in (REPO / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for top in {n.split(".")[0] for n in names} - set(sys.stdlib_module_names) - {"braindive", "training"}:
                    dists = {_name(d) for d in providers.get(top, [top])}
                    if top not in optional and not dists & (runtime | transitive):
                        missing.add(f"{path.relative_to(REPO)}: {top}")
    assert not missing


def _import_graph() -> dict[str, set[str]]:
    """braindive module -> the braindive modules it imports anywhere in its code (function-level imports too)."""
    graph = {}
    for path in (REPO / "braindive").rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {target, *(f"{target}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[module] = found - {module}
    return {module: found & graph.keys() for module, found in graph.items()}


def test_no_import_cycle_in_the_package():
    """Including the one that was ``subjects -> pycortex_subjects -> flatmap -> subjects``."""
    graph = _import_graph()

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and not seen.add(m) and reaches(m, goal, seen)) for m in graph[start])

    assert {"braindive.subjects", "braindive.pycortex_subjects", "braindive.pycortex_db"} <= graph.keys()
    assert not [m for m in graph if reaches(m, m, set())]


def test_every_name_the_project_imports_from_itself_exists():
    """Function-level imports too (benchmarks import inside ``run``): a name removed from a module is found here,
    not when a benchmark is next run (``benchmarks.subregions`` imported a ``DEMO_DEFAULTS`` that had gone)."""
    import importlib

    missing = []
    for folder in ("braindive", "training", "ui", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ImportFrom):
                    continue
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                if base.split(".")[0] not in ("braindive", "training", "ui", "benchmarks"):
                    continue
                if base.startswith("ui") or path.parts[-2] == "ui":
                    pytest.importorskip("gradio")
                module = importlib.import_module(base)
                for alias in node.names:
                    if alias.name != "*" and not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{base}.{alias.name}")
                        except ModuleNotFoundError:
                            missing.append(f"{path.relative_to(REPO)}:{node.lineno} {base}.{alias.name}")
    assert not missing


def _copy_project(dest: Path) -> Path:
    """The files git does not ignore (what a clone or sdist holds), without build outputs or caches."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RAY_")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _venv(root: Path, *install: str) -> tuple[Path, Path]:
    """A fresh venv under ``root`` with ``pip install --no-deps --no-build-isolation INSTALL``; third-party packages
    come from this environment's site-packages through a ``.pth`` line, so nothing is downloaded."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_shared_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                           *install], cwd=root, capture_output=True, text=True, env=_clean_env(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return python, site


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip install .`` of a copy of the project into a fresh venv; the copy is deleted afterwards."""
    root = tmp_path_factory.mktemp("installed")
    source = _copy_project(root / "src")
    python, site = _venv(root, str(source))
    shutil.rmtree(source)
    return python, site


def test_editable_install_imports_the_checkout_from_anywhere(tmp_path):
    source = _copy_project(tmp_path / "src")
    python, _ = _venv(tmp_path, "-e", str(source))
    script = ("import json, braindive, training\nfrom braindive.demo import ASSET_ENCODER\n"
              "print(json.dumps([braindive.__file__, training.__file__, str(ASSET_ENCODER)]))")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    package, training, encoder = map(Path, _run(python, script, elsewhere))
    assert package == source / "braindive" / "__init__.py" and training == source / "training" / "__init__.py"
    assert encoder == source / "braindive" / "assets" / "demo-encoder" and (encoder / "config.json").is_file()


def _run(python, script: str, cwd: Path, *args, timeout=600, env=None) -> dict:
    done = subprocess.run([str(python), "-c", script, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          env=env or _clean_env(), timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


DEMO = """
import json, sys
import numpy as np, torch
import braindive
from braindive.tiny_decoder import fast_description

braindive.set_cache_dir(sys.argv[1])
bundle = braindive.demo.load()
out = bundle.pipe(objective=braindive.Objective.maximize(bundle.subject.roi("FFA")), num_inference_steps=3,
                  height=64, width=64, generator=torch.Generator().manual_seed(0), output_type="np")
print(json.dumps({"package": braindive.__file__, "model": str(bundle.pipe.config._name_or_path),
                  "encoder": str(braindive.demo.ASSET_ENCODER), "label": bundle.label,
                  "trained": bundle.label == braindive.demo.DEMO_LABEL, "fast": fast_description(),
                  "pixels": float(np.asarray(out.images).std()), "objective": float(out.objective_values[0])}))
"""


def test_installed_package_runs_the_demo_from_package_data_in_another_directory(installed, tmp_path):
    python, site = installed
    result = _run(python, DEMO, tmp_path, REPO / ".cache" / "braindive")
    package = site / "braindive"
    assert Path(result["package"]) == package / "__init__.py"
    assert Path(result["model"]) == package / "assets" / "demo-sd"  # the trained model, not the random fallback
    assert Path(result["encoder"]) == package / "assets" / "demo-encoder" and result["trained"], result["label"]
    assert "not measured" not in result["fast"] and "(FFA)" in result["fast"]  # assets/measured/*.json read
    assert result["pixels"] > 0.01 and math.isfinite(result["objective"])
    done = subprocess.run([str(python.parent / "braindive"), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          env=_clean_env())
    assert done.returncode == 0 and "batch" in done.stdout  # the console script


SWEEP = """\
name = "packaged"
model = "demo"
catalog = "catalog"
seeds = { start = 0, count = 2 }

[[encoders]]
subject = "S1"
path = "demo"

[targets]
rois = ["FFA"]

[settings]
steps = 2
height = 64
width = 64

[execution]
batch_size = 1
cpus_per_worker = 1
"""

SWEEP_DRIVER = """
import json, sys
import ray
import braindive
from braindive.batch.cluster import connect
from braindive.cli import main

address, sweep, cache = sys.argv[1:4]
braindive.set_cache_dir(cache)
code = main(["batch", sweep, "--address", address])  # connects, runs, disconnects
connect(address)  # again, as the batch command did: where do this job's workers import braindive from?

@ray.remote(num_cpus=1)
def where():
    import os
    import braindive
    return braindive.__file__, os.environ.get("PYTHONPATH")

print(json.dumps({"code": code, "driver": braindive.__file__, "worker": ray.get(where.remote())}))
"""


def _sweep(python, site: Path, folder: Path, address: str, cache: Path, env: dict) -> tuple[dict, str]:
    """``braindive batch --address`` run by the installed package from ``folder``; its result and stderr."""
    (folder / "sweep.toml").write_text(SWEEP)
    done = subprocess.run([str(python), "-c", SWEEP_DRIVER, address, str(folder / "sweep.toml"), str(cache)],
                          cwd=folder, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0 and "2 new, 2/2 images in the catalog" in done.stdout, done.stderr[-3000:]
    assert len(list((folder / "catalog").rglob("*.png"))) >= 2
    assert Path(result["driver"]) == site / "braindive" / "__init__.py"
    worker_file = Path(result["worker"][0])  # the package Ray unpacked for this job, not a checkout or site-packages
    assert "runtime_resources" in worker_file.parts, worker_file
    assert not worker_file.is_relative_to(REPO) and not worker_file.is_relative_to(site)
    return result, done.stderr


@pytest.mark.slow
def test_ray_sweep_with_the_installed_package_and_no_pythonpath(installed, local_ray, tmp_path):
    """A driver of the installed package, run from another folder without PYTHONPATH, joins the test session's Ray
    instance (whose workers run this environment's Python): the workers import the braindive the driver shipped."""
    python, site = installed
    _sweep(python, site, tmp_path, local_ray.get_runtime_context().gcs_address, REPO / ".cache" / "braindive",
           _clean_env())


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_node_cluster_runs_a_sweep_with_code_from_runtime_env(installed, tmp_path):
    """``ray start --head`` + ``ray start --address`` (one CPU each) on this machine with token authentication on
    (a token in a private HOME, as ``ray get-auth-token --generate`` writes it); ``braindive batch --address`` from
    the installed package in another folder, without RAY_AUTH_MODE. Each node runs with ``--block`` as a child of
    this test and is stopped by terminating that process (``ray stop`` would stop every Ray on the machine)."""
    python, site = installed
    ray_cli = Path(sys.executable).parent / "ray"
    home, temp = tmp_path / "home", Path(f"/tmp/bd-ray-{os.getpid()}")  # short: Ray's socket paths are limited
    home.mkdir()
    env = _clean_env(HOME=str(home))
    subprocess.run([str(ray_cli), "get-auth-token", "--generate"], env=env, capture_output=True, check=True)
    gcs, agent_head, agent_node = _free_ports(3)
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp), "--disable-usage-stats",
              "--block"]
    nodes, started = [], time.monotonic()
    try:
        nodes.append(subprocess.Popen([str(ray_cli), "start", "--head", "--port", str(gcs), "--include-dashboard",
                                       "false", "--dashboard-agent-listen-port", str(agent_head), *common], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_nodes(python, gcs, 1, env)
        nodes.append(subprocess.Popen([str(ray_cli), "start", "--address", f"127.0.0.1:{gcs}",
                                       "--dashboard-agent-listen-port", str(agent_node), *common],
                                      env={**env, "RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))
        _wait_for_nodes(python, gcs, 2, env)
        result, log = _sweep(python, site, tmp_path, f"127.0.0.1:{gcs}", tmp_path / "cache", env)
        assert "RAY_AUTH_MODE=token" in log and "2 worker(s)" in log, log[-3000:]  # token auth detected and set
        worker_file, pythonpath = result["worker"]
        assert Path(worker_file).is_relative_to(temp)
        # Ray's py_modules put the unpacked package on the worker's PYTHONPATH; nothing else is there
        assert all("runtime_resources" in Path(p).parts for p in pythonpath.split(os.pathsep)), pythonpath
    finally:
        for node in reversed(nodes):
            node.terminate()
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, 9)
                node.wait()
        _kill_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)
    print(f"two-node cluster test: {time.monotonic() - started:.0f} s")


def _wait_for_nodes(python, port: int, count: int, env: dict, timeout: float = 180) -> None:
    script = ("import sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
              "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline, done = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        done = subprocess.run([str(python), "-c", script, f"127.0.0.1:{port}"], capture_output=True, text=True,
                              env={**env, "RAY_AUTH_MODE": "token"}, timeout=120)
        if done.returncode == 0 and int(done.stdout.split()[-1]) >= count:
            return
        time.sleep(2)
    log = done.stderr[-2000:] if done else ""
    raise AssertionError(f"the Ray cluster at port {port} did not reach {count} node(s): {log}")


def _kill_leftovers(temp: Path) -> None:
    """Processes of this test's cluster still alive after their node stopped (their command lines name its folder)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(temp) in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), 9)
        except OSError:
            continue


def test_joining_a_token_cluster_without_a_token_explains_what_to_set(tmp_path):
    """RAY_AUTH_MODE=token but no token on this machine (a private HOME): one error naming the address, the mode
    and the fix, before any connection attempt."""
    script = ("from braindive.batch.cluster import connect\n"
              "try:\n    connect('127.0.0.1:9')\nexcept ConnectionError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_clean_env(HOME=str(tmp_path), RAY_AUTH_MODE="token"))
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout
    assert message.startswith("Could not connect to the Ray cluster at 127.0.0.1:9 (RAY_AUTH_MODE=token)")
    assert "no authentication token was found" in message and "ray get-auth-token" in message
