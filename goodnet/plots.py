"""PNG plots of goodnet's results (matplotlib, headless Agg backend).

Every function takes the figures to draw and a destination path, writes the
PNG atomically and returns the path.
"""

import logging

from goodnet.files import atomic_write

logger = logging.getLogger(__name__)


def new_figure(width=7.0, height=4.5):
    """Return (figure, axes) drawn with the headless Agg backend (no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot(1, 1, 1)


def save_figure(figure, path):
    """Save ``figure`` as a PNG at ``path`` atomically; return ``path``."""
    figure.tight_layout()
    with atomic_write(path) as temporary:
        figure.savefig(temporary, format="png")
    return str(path)
