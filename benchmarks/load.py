"""Load test of the app: N simulated users generating and stopping at once against the offline demo.

    python -m benchmarks.load --users 8 --rounds 25

Starts ``app.py`` on 127.0.0.1 (a free port, a fresh data folder; nothing else is contacted), with a few
copies of the demo encoder so that requests cycle through encoders (``--max-encoders`` of them stay
loaded). Each user is a ``gradio_client`` session that generates ``--rounds`` times; every
``--stop-every``-th run presses Stop at its first update, which for a queued run means while it waits.
Each user closes its session when done, as a closed browser tab does. Reports requests, failures
(must be 0), stopped runs, p50/p95 time to the first preview and to the end, the app's memory (RSS)
after the first round and at the end (the growth after warm-up), Gradio's sessions held (the app
runs under ``benchmarks.probed_app``; ``--tracemalloc`` adds the Python memory traced, slower), and
whether any run stopped while waiting produced images (isolation). Bounded: at most 32 users,
``--timeout`` seconds in all.
Writes the "## Load" section of ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
from benchmarks.machine import write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "## Load"
PHASES = ("start", "warm", "load1", "load2", "load3", "load")
MAX_USERS = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _start_app(data: Path, port: int, args) -> subprocess.Popen:
    encoders = data / "encoders"
    for k in range(args.encoders):  # same voxels and tower as the demo encoder: cycled by the users
        shutil.copytree(REPO / "braindive" / "assets" / "demo-encoder", encoders / f"demo-copy-{k}")
    # a 1 s heartbeat: a user who leaves is noticed at once, as when a browser tab closes
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_HEARTBEAT_INTERVAL": "1"}
    probe = ["--probe-out", str(data / "probe.jsonl"), *(["--tracemalloc"] if args.tracemalloc else []), "--"]
    cmd = [sys.executable, "-m", "benchmarks.probed_app", *probe, "--preset", "demo", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
           str(data), "--image-size", str(args.image_size), "--concurrency", str(args.concurrency),
           "--queue-size", str(max(16, args.users)), "--max-encoders", str(args.max_encoders)]
    app = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, text=True,
                           stdout=open(data / "app.log", "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise SystemExit(f"the app exited ({app.returncode}); see {data / 'app.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
            return app
        except OSError:
            time.sleep(1)
    app.kill()
    raise SystemExit("the app did not start within 300 s")


def _probe(app: subprocess.Popen, data: Path) -> dict:
    """The app's own memory record (``benchmarks.probed_app``): RSS, sessions held, traced Python memory."""
    out = data / "probe.jsonl"
    before = len(out.read_text().splitlines()) if out.exists() else 0
    app.stdin.write("\n")
    app.stdin.flush()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        lines = out.read_text().splitlines() if out.exists() else []
        if len(lines) > before:
            return json.loads(lines[before])
        time.sleep(0.2)
    raise SystemExit("the app did not answer the memory probe within 120 s")


def _one_run(client, subject, encoder, seed, steps, stop) -> dict:
    """One generation; Stop at the first update when ``stop``. Returns timings and how it ended."""
    t0 = time.perf_counter()
    # by name: fields added to the form later (e.g. "keep the best k") keep their defaults
    job = client.submit(subj=subject, enc=encoder, obj="maximize", con="EBA", w=1.0, sc=20.0, n_steps=steps,
                        sched="dpm", sd=seed, n=1, text="", guidance="exact", api_name="/run")
    first_preview = waited = None
    texts = []
    for output in job:
        if not isinstance(output, (list, tuple)) or len(output) < 2:
            raise RuntimeError(f"unexpected streamed output {output!r:.200}")
        preview, text = output[:2]  # then the gallery and the activation view
        texts.append(text or "")
        if (text or "").startswith("Waiting"):
            waited = True
        if preview is not None and first_preview is None:
            first_preview = time.perf_counter() - t0
        if stop and len(texts) == 1:
            client.predict(api_name="/stop_run")
    finished = time.perf_counter() - t0
    final = job.outputs()[-1][1] if job.outputs() else ""
    expected = r"(Stopped.*|Done: 1 image\(s\)\.)" if stop else r"Done: 1 image\(s\)\."
    ok = job.status().success and re.fullmatch(expected, final or "") is not None
    return {"seed": seed, "stop": stop, "ok": ok, "final": final, "first_preview": first_preview, "finish": finished,
            "stopped_waiting": final == "Stopped while waiting: nothing was generated.", "waited": bool(waited)}


def _user(url, index, args, subject, encoders, runs, deadline) -> None:
    from gradio_client import Client

    client = Client(url, verbose=False)
    try:
        for r in range(args.rounds):
            if time.monotonic() > deadline:
                return
            n = index * args.rounds + r
            try:
                runs.append(_one_run(client, subject, encoders[n % len(encoders)], seed=1000 + n, steps=args.steps,
                                     stop=n % args.stop_every == 0))
            except Exception as exc:  # counted as a failure
                runs.append({"seed": 1000 + n, "ok": False, "final": f"{type(exc).__name__}: {exc}", "stop": False})
    finally:
        client.close()  # the user leaves: the app is told when its heartbeat ends


def service_memory(args, n: int = 200, every: int = 50) -> dict:
    """RSS of the service alone over ``n`` requests cycling through the demo encoder and its copies."""
    from ui.service import GenerationRequest, Service
    from ui.settings import Settings

    data = Path(tempfile.mkdtemp(prefix="braindive-service-"))
    try:
        for k in range(args.encoders):
            shutil.copytree(REPO / "braindive" / "assets" / "demo-encoder", data / "encoders" / f"demo-copy-{k}")
        service = Service(Settings(data_dir=str(data), image_size=args.image_size, max_encoders=args.max_encoders))
        names = ["demo", *(f"demo-copy-{k}" for k in range(args.encoders))]
        rss = []
        for i in range(n):
            for _ in service.generate(GenerationRequest(steps=args.steps, encoder=names[i % len(names)], seed=i)):
                pass
            if (i + 1) % every == 0:
                rss.append(psutil.Process().memory_info().rss / 2**20)
        return {"requests": n, "every": every, "rss_mb": rss, "towers": service.models.live_towers(),
                "loaded": len(service.models.loaded_encoders())}
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run(args) -> dict:
    from gradio_client import Client

    users = min(args.users, MAX_USERS)
    data = Path(tempfile.mkdtemp(prefix="braindive-load-"))
    port = _free_port()
    app = _start_app(data, port, args)
    url = f"http://127.0.0.1:{port}/"
    try:
        api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)
        params = api["named_endpoints"]["/run"]["parameters"]
        subject = next(p["parameter_default"] for p in params if p["parameter_name"] == "subj")
        encoders = ["demo", *(f"demo-copy-{k}" for k in range(args.encoders))]
        runs: list[dict] = []
        deadline = time.monotonic() + args.timeout
        memory, probes = {"start": _rss_mb(app.pid)}, {"start": _probe(app, data)}
        t0 = time.perf_counter()
        quarter = max(1, args.rounds // 4)
        phases = [("warm", 1)] + [(f"load{k}", quarter) for k in range(1, 4)] + [("load", args.rounds - 3 * quarter)]
        for phase, rounds in phases:
            args_phase = argparse.Namespace(**{**vars(args), "rounds": rounds})
            threads = [threading.Thread(target=_user, args=(url, u, args_phase, subject, encoders, runs, deadline))
                       for u in range(users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(1.0, deadline - time.monotonic()))
            memory[phase], probes[phase] = _rss_mb(app.pid), _probe(app, data)
        wall = time.perf_counter() - t0
        time.sleep(5)  # every user has left: their heartbeats end
        probes["left"] = _probe(app, data)
        with sqlite3.connect(data / "catalog" / "index.sqlite") as db:
            stored = {seed for (seed,) in db.execute("SELECT seed FROM images")}
    finally:
        app.terminate()
        app.wait(60)
    failed = [r for r in runs if not r["ok"]]
    if failed:
        print(f"kept the app's data folder and log for the failed runs: {data}")
    else:
        shutil.rmtree(data, ignore_errors=True)
    done = [r for r in runs if r["ok"] and not r["stop"]]
    leaked = [r["seed"] for r in runs if r.get("stopped_waiting") and r["seed"] in stored]

    def pct(key, q):
        values = [r[key] for r in done if r.get(key) is not None]
        return float(np.percentile(values, q)) if values else float("nan")

    return {"users": users, "requests": len(runs), "failures": sum(not r["ok"] for r in runs),
            "failed": [r["final"] for r in runs if not r["ok"]][:5],
            "stopped": sum(r["stop"] for r in runs), "stopped_waiting": sum(bool(r.get("stopped_waiting")) for r in runs),
            "waited": sum(bool(r.get("waited")) for r in runs), "isolation_violations": len(leaked),
            "first_preview_p50": pct("first_preview", 50), "first_preview_p95": pct("first_preview", 95),
            "finish_p50": pct("finish", 50), "finish_p95": pct("finish", 95), "wall_s": wall,
            "rss_mb": memory, "probes": probes, "encoders": len(encoders), "config": vars(args), "service": service_memory(args)}


def _markdown(r: dict, command: str) -> str:
    m, pr = r["rss_mb"], r["probes"]
    traced = ""
    if "traced_mb" in pr["start"]:
        values = ", ".join(f"{pr[k]['traced_mb']:.1f}" for k in (*PHASES, "left"))
        traced = f" Python memory traced by tracemalloc (MB) at the same points and once every user had left: {values}."
    return "\n".join([
        SECTION, "",
        f"`{command}` — the offline demo app on 127.0.0.1, {r['users']} simulated `gradio_client` users at once, "
        f"{r['config']['steps']} steps at {r['config']['image_size']} px, `--concurrency {r['config']['concurrency']}`, "
        f"requests cycling through {r['encoders']} encoders with `--max-encoders {r['config']['max_encoders']}`; "
        "every " f"{r['config']['stop_every']}th run presses Stop at its first update. Machine: 2 shared CPU cores "
        "(other work running), no GPU.", "",
        "| requests | failures | stopped (of them while queued) | runs that waited in the queue | images from runs stopped while queued |",
        "| --- | --- | --- | --- | --- |",
        f"| {r['requests']} | {r['failures']} | {r['stopped']} ({r['stopped_waiting']}) | {r['waited']} | "
        f"{r['isolation_violations']} |", "",
        "| time (s) | p50 | p95 |", "| --- | --- | --- |",
        f"| to first preview | {r['first_preview_p50']:.2f} | {r['first_preview_p95']:.2f} |",
        f"| to the end | {r['finish_p50']:.2f} | {r['finish_p95']:.2f} |", "",
        f"App memory (RSS, MB): {m['start']:.0f} at start, {m['warm']:.0f} after the first round "
        f"({r['users']} requests), then {', '.join(f'{m[k]:.0f}' for k in ('load1', 'load2', 'load3'))} after each "
        f"further quarter, {m['load']:.0f} after all {r['requests']} requests: **{m['load'] - m['warm']:+.0f} MB after "
        f"warm-up** ({m['load'] - m['load1']:+.0f} MB over the last three quarters). Gradio sessions held: "
        f"{', '.join(str(pr[k]['sessions']) for k in PHASES)} at the same points, {pr['left']['sessions']} once every "
        f"user had left ({pr['left']['session_states']} live `SessionState` objects; each user opens a new session for the warm-up "
        f"round and for each quarter).{traced} Wall time {r['wall_s']:.0f} s.",
        f"The service alone (in one process, no Gradio; {r['service']['requests']} requests cycling through the same "
        f"encoders): {r['service']['rss_mb'][0]:.0f} MB after the first {r['service']['every']} requests, then "
        f"{', '.join(f'{v:.0f}' for v in r['service']['rss_mb'][1:])} MB every {r['service']['every']} more; "
        f"image towers alive at the end: {r['service']['towers']}, encoders loaded: {r['service']['loaded']}.", "",
    ])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help=f"simulated users at once (at most {MAX_USERS})")
    p.add_argument("--rounds", type=int, default=25, help="generations per user after the warm-up round")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--encoders", type=int, default=4, help="copies of the demo encoder to cycle through")
    p.add_argument("--max-encoders", type=int, default=2)
    p.add_argument("--stop-every", type=int, default=4, help="every k-th run presses Stop at its first update")
    p.add_argument("--timeout", type=float, default=1500, help="seconds for the whole run")
    p.add_argument("--tracemalloc", action="store_true", help="trace the app's Python memory too (slower)")
    p.add_argument("--results-md", default=str(HERE / "RESULTS.md"), help="RESULTS.md to update ('' = none)")
    args = p.parse_args(argv)
    result = run(args)
    command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
    print(_markdown(result, command.strip()))
    if result["failed"]:
        print("failures:", result["failed"])
    if args.results_md:
        write_section(Path(args.results_md), SECTION, _markdown(result, command.strip()))
    return result


if __name__ == "__main__":
    main()
