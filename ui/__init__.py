"""Gradio front end. Tabs get a ``Service``; they never hold models."""
from __future__ import annotations

import gradio as gr

from . import explore, history, image_cache, train
from .memory import release_session
from .service import Service
from .settings import Settings

__all__ = ["build_app", "CSS"]

CSS = """
#demo-banner {background:#fff4d6;border:1px solid #e0b84c;border-radius:6px;padding:4px 12px;}
#flatmap img {cursor: crosshair;}
#preview img {width: 100%; height: 100%; object-fit: contain;}
#gallery .caption-label, #history-gallery .caption-label {white-space: normal; overflow: visible; text-overflow: clip;}
"""


def build_app(service: Service, settings: Settings) -> gr.Blocks:
    image_cache.install()  # images served while the same bytes are saved again arrive whole (ui/image_cache.py)
    # Gradio copies every served file (previews, images, exports) into its cache: clear day-old copies hourly
    with gr.Blocks(title="BrainDiVE Studio", delete_cache=(3600, 86400)) as app:
        gr.Markdown("# BrainDiVE Studio\nBrain-guided diffusion: click a region of visual cortex and watch images "
                    "form that an fMRI encoder predicts will drive it (Luo et al., NeurIPS 2023).")
        gr.Markdown(f"**{service.label()}**", elem_id="demo-banner")
        with gr.Tabs() as tabs:
            with gr.Tab("Explore", id="explore"):
                explore_parts = explore.build(service, settings)
            with gr.Tab("Train", id="train") as train_tab:
                train_parts = train.build(service, explore_parts)
            with gr.Tab("History", id="history") as history_tab:
                history_parts = history.build(service, owner=service.history_owner)
        load, inputs, outputs = history_parts["refresh"]
        history_tab.select(load, inputs, outputs)
        # History's "run again": Explore's fields take the result's settings, and Explore is shown
        apply_settings, fields = explore_parts["run_again"]
        history_parts["run_again"][1].change(lambda values: {**apply_settings(values), tabs: gr.Tabs(selected="explore")},
                                             history_parts["run_again"][1], [*fields, tabs])
        app.load(*explore_parts["refresh"])  # lists as they are now: encoders trained since the app started
        app.load(*train_parts["restore"])  # the latest training job, its log and results, after a reload
        train_tab.select(None, None, None, js=train.FOLLOW_LOG_JS)

        def closed(request: gr.Request):
            """The page is gone: stop its generation and drop what Gradio keeps for the session (ui.memory)."""
            service.cancel(request.session_hash)
            release_session(app, request.session_hash)

        app.unload(closed)
    # generations wait in the service's own queue (cancellable, with their place shown); see explore.build
    app.queue(max_size=settings.queue_size + settings.concurrency, default_concurrency_limit=settings.concurrency)
    return app
