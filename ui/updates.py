"""Answers of Gradio events that leave some of their outputs as they are."""
from __future__ import annotations

import gradio as gr

__all__ = ["unchanged"]


def unchanged(outputs) -> dict:
    """An event's answer that leaves every one of its ``outputs`` as it is (an empty dict would blank them)."""
    return {component: gr.skip() for component in outputs}
