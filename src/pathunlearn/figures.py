"""Save a matplotlib figure as PNG and SVG, each file written atomically: the one helper
behind every figure of the package (the report's and the theory's).

Uses matplotlib's object API with the Agg canvas directly, so no GUI backend is ever touched.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pathunlearn.files import write_bytes

FORMATS = ("png", "svg")


def save_figure(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as out_dir/stem.png and .svg (atomically); return the paths."""
    FigureCanvasAgg(fig)
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=130, bbox_inches="tight")
        path = Path(out_dir) / f"{stem}.{fmt}"
        write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
