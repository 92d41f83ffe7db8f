"""BrainDiVE Studio web app (also the Hugging Face Space entry point).

    python app.py [--preset auto|demo|sd21] [--encoder CKPT] [--port 7860] ...

Every flag can also be set as an environment variable BRAINDIVE_<FLAG> (see ui/settings.py); Gradio's
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured too.
"""
import logging
import os
import signal
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ui import CSS, build_app  # noqa: E402
from ui.memory import limit_malloc_arenas  # noqa: E402
from ui.service import Service, ServiceError  # noqa: E402
from ui.settings import Settings, parse_settings  # noqa: E402


def served_paths(settings: Settings) -> dict:
    """What Gradio may serve from the data folder: generated images, ZIP exports, training reports.

    Never the catalog index or its records of other users, training logs or datasets (``allowed_paths`` is
    a prefix list, so it names those folders only; the index is blocked explicitly as well).
    """
    allowed = [settings.catalog_dir / "images", settings.exports_dir, settings.reports_dir]
    index = settings.catalog_dir / "index.sqlite"
    blocked = [index, index.with_name("index.sqlite-wal"), index.with_name("index.sqlite-shm"), settings.jobs_dir,
               settings.owner_key_path]
    return {"allowed_paths": [str(p.resolve()) for p in allowed], "blocked_paths": [str(p.resolve()) for p in blocked]}


def launch(app, settings: Settings, **kwargs) -> None:
    """Serve ``app`` as configured (returns at once): only the data folder's public parts, uploads up to
    ``--max-upload-mb``, and without Gradio's ``deep_link`` route (it returns a snapshot of any session's
    UI state to whoever names the session; the app offers no deep links).
    """
    options = dict(server_name=settings.host, server_port=settings.port, share=settings.share, ssr_mode=False, css=CSS,
                   footer_links=["api"], max_file_size=int(settings.max_upload_mb * 1024 * 1024), **served_paths(settings))
    app.launch(**{**options, **kwargs}, prevent_thread_lock=True)
    routes = app.server_app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", "") != "/gradio_api/deep_link"]


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_settings(argv)
    if "MALLOC_ARENA_MAX" not in os.environ:  # glibc's own setting wins; else fewer arenas, flat RSS (ui/memory.py)
        limit_malloc_arenas()
    # SIGTERM (how Spaces, systemd and docker stop the app) exits normally, so training jobs are cancelled at exit
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        service = Service(settings)
        app = build_app(service, settings)
    except ServiceError as exc:  # a set-up the app cannot serve (no encoder, no loadable subject): say why, no traceback
        raise SystemExit(f"BrainDiVE Studio cannot start: {exc}") from None
    launch(app, settings)
    app.block_thread()


if __name__ == "__main__":
    main(sys.argv[1:])
