"""``app.py`` with a memory probe, for the load benchmark: each line read on stdin appends one JSON line to a file.

    python -m benchmarks.probed_app --probe-out FILE [--tracemalloc] -- APP_ARGS...

The line holds the process's RSS, Gradio's per-session state (sessions held, live ``SessionState``
objects) after a garbage collection, and with ``--tracemalloc`` the Python memory tracemalloc traces
(tracing from start-up, one frame: it slows the app down, so the timed load run leaves it off).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import threading
import tracemalloc
from pathlib import Path

import psutil


def _probe(blocks) -> dict:
    from gradio.state_holder import SessionState

    gc.collect()
    line = {"rss_mb": psutil.Process().memory_info().rss / 2**20,
            "sessions": len(blocks.state_holder.session_data) if blocks else None,
            "session_states": sum(isinstance(o, SessionState) for o in gc.get_objects())}
    if tracemalloc.is_tracing():
        line["traced_mb"] = tracemalloc.get_traced_memory()[0] / 2**20
    return line


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.probed_app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe-out", required=True, help="file that gets one JSON line per line read on stdin")
    p.add_argument("--tracemalloc", action="store_true", help="trace Python allocations (slower)")
    p.add_argument("app_args", nargs=argparse.REMAINDER, help="arguments of app.py, after --")
    args = p.parse_args(argv)
    if args.tracemalloc:
        tracemalloc.start(1)
    import app
    import ui

    built = []
    build_app = ui.build_app
    app.build_app = lambda *a, **k: built.append(build_app(*a, **k)) or built[-1]  # keep the Blocks to inspect

    def answer():
        out = Path(args.probe_out)
        for _ in sys.stdin:
            with out.open("a") as f:
                f.write(json.dumps(_probe(built[0] if built else None)) + "\n")

    threading.Thread(target=answer, daemon=True).start()
    app.main([a for a in args.app_args if a != "--"])


if __name__ == "__main__":
    main()
