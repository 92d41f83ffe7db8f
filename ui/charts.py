"""Plotly charts for the app."""
from __future__ import annotations

import plotly.graph_objects as go

__all__ = ["roi_chart"]


def roi_chart(roi_means: dict, baseline: dict, target: str = "") -> go.Figure:
    """Predicted mean activation per ROI: brain-guided image vs the unguided image of the same seed."""
    names = list(roi_means)
    base_target = target.split("-vs-")[0].split(".")[0]
    fig = go.Figure([
        go.Bar(name="unguided (same seed)", x=names, y=[baseline[n] for n in names], marker_color="#9aa5b1"),
        go.Bar(name="brain-guided", x=names, y=[roi_means[n] for n in names],
               marker_color=["#d1495b" if n == base_target else "#00798c" for n in names]),
    ])
    fig.update_layout(barmode="group", height=320, margin=dict(l=40, r=10, t=40, b=40),
                      title=f"Predicted mean activation per ROI (target: {target})",
                      yaxis_title="predicted response", legend=dict(orientation="h", y=-0.2))
    return fig
