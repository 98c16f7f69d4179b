"""Figures of trajectory files: a summary of one run and a comparison of several runs.

``plot_run(ds)`` draws one run: train and test loss against flow time, the extreme eigenvalues of
the Gram matrix A = J J^T with the Gauss--Newton damping, how far the weights (and, when the file
holds it, the kernel) moved, and the hidden features u_i projected on the teacher directions at a
few times. ``plot_runs(runs)`` compares runs, e.g. the files of a sweep: loss curves labeled by the
config values that differ between runs, and the final test loss against tau0
(``model.init_scale``) or N (``data.n_train``) when those vary.

Figures are built on :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state), so
plotting works without a display and never changes a global backend. Colours are the Okabe--Ito
palette (colorblind-safe) for unordered categories and ``cividis`` for ordered values.
"""

from gnflow._exports import present_under
from gnflow.plot._quantities import differing_config_keys, flatten_config, teacher_plane, weight_movement
from gnflow.plot._run import plot_run
from gnflow.plot._runs import RunCurves, load_run_curves, plot_runs
from gnflow.plot._save import FIGURE_SUFFIXES, save_figure
from gnflow.plot._style import OKABE_ITO

__all__ = [
    "FIGURE_SUFFIXES",
    "OKABE_ITO",
    "RunCurves",
    "differing_config_keys",
    "flatten_config",
    "load_run_curves",
    "plot_run",
    "plot_runs",
    "save_figure",
    "teacher_plane",
    "weight_movement",
]

# the public objects are documented, shown and pickled as gnflow.plot.NAME, where users import them
present_under(__name__, globals(), __all__)
