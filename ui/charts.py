"""Plotly charts for the app."""
from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["roi_chart"]

TARGET, REGION_B, OTHER = "#d1495b", "#00c8ff", "#1f4e79"  # region B as on the flatmap (cyan)


def roi_chart(roi_means: dict, baseline: dict, target) -> go.Figure:
    """Predicted mean activation per ROI: brain-guided image vs the unguided image of the same seed.

    ``target`` is the result's ``braindive.targets.Target``: region A's bar is red; region B of a contrast is
    cyan, as outlined on the flatmap; the title names the target as its label reads (``min PPA``).
    """
    names = list(roi_means)
    base_a = target.region_a.split(".")[0] if target.voxels is None else ""
    base_b = target.region_b.split(".")[0]
    colours = [TARGET if n == base_a else REGION_B if n == base_b else OTHER for n in names]
    region_b = target.region_b
    fig = go.Figure([
        go.Bar(name="unguided (same seed)", x=names, y=[baseline[n] for n in names], marker_color="#9aa5b1"),
        go.Bar(name="brain-guided", x=names, y=[roi_means[n] for n in names], marker_color=colours),
    ])
    title = f"Predicted mean per ROI · {target.label}" + (f" · A {target.region_a} (red), B {region_b} (cyan)"
                                                          if region_b else f" · {target.region_a} (red)")
    fig.update_layout(barmode="group", height=320, margin=dict(l=40, r=10, t=40, b=40), title=title,
                      yaxis_title="predicted response", legend=dict(orientation="h", y=-0.2))
    return fig
