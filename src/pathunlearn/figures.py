"""Save a matplotlib figure as PNG and SVG, each file written atomically: the one helper
behind every figure of the package (the report's and the theory's).

Uses matplotlib's object API with the Agg canvas directly, so no GUI backend is ever touched.
The figure is laid out once: ``savefig(bbox_inches="tight")`` per format would draw it twice
each (once to measure its extent, once to render), running its layout engine every time; here
one pass that measures without rendering, at the output's dpi, runs the layout, the positions
it found are kept, and both files are rendered once each with the extent it measured (the
same PNG bytes as before).
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib import rc_context, rcParams
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pathunlearn.files import write_bytes

FORMATS = ("png", "svg")
DPI = 130


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as out_dir/stem.png and .svg (atomically); return the paths."""
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(DPI)
    fig.draw_without_rendering()  # the layout engine places the axes here, once
    with rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
        fig.set_layout_engine(None)  # keep those positions: no layout (nor its draw) again
    extent = fig.get_tightbbox(canvas.get_renderer()).padded(rcParams["savefig.pad_inches"])
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches=extent)
        path = Path(out_dir) / f"{stem}.{fmt}"
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
