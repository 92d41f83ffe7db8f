"""BrainDiVE Studio web app (also the Hugging Face Space entry point).

    python app.py [--preset auto|demo|sd21] [--encoder CKPT] [--port 7860] ...

Every flag can also be set as an environment variable BRAINDIVE_<FLAG> (see ui/settings.py).
"""
import logging
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ui import CSS, build_app  # noqa: E402
from ui.service import Service, ServiceError  # noqa: E402
from ui.settings import parse_settings  # noqa: E402


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_settings(argv)
    try:
        service = Service(settings)
        app = build_app(service, settings)
    except ServiceError as exc:  # a set-up the app cannot serve (no encoder, no loadable subject): say why, no traceback
        raise SystemExit(f"BrainDiVE Studio cannot start: {exc}") from None
    allowed = [settings.catalog_dir, settings.jobs_dir, settings.exports_dir]
    app.launch(server_name=settings.host, server_port=settings.port, share=settings.share, ssr_mode=False,
               css=CSS, allowed_paths=[str(path.resolve()) for path in allowed], footer_links=["api"])


if __name__ == "__main__":
    main(sys.argv[1:])
