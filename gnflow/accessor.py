"""The ``ds.gnflow`` accessor of xarray Datasets: a trajectory file's run in the terms of gnflow.

Importing gnflow registers it, so any dataset read from a gnflow file, by
:func:`gnflow.read_dataset` or by ``xarray.load_dataset``, answers::

    ds.gnflow.final()            # the time series at the last saved time (Dataset of scalars)
    ds.gnflow.output_weights     # weights of component v: (t, particle)
    ds.gnflow.hidden_weights     # weights of components u0 .. u{d-1}, b: (t, particle, component)
    ds.gnflow.config             # the RunConfig of the run (gnflow_config)
    ds.gnflow.status             # how it ended, a RunResult (gnflow_status)
    ds.gnflow.plot()             # the summary figure of ``gnflow plot``

Everything is read from the dataset itself; nothing is cached, so a dataset changed in place
(``gnflow observe``) answers with its new content.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xarray as xr

from gnflow.config import RunConfig
from gnflow.dataset import component_labels, dataset_result, run_config_of
from gnflow.status import RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["OUTPUT_COMPONENT", "GnflowAccessor"]

OUTPUT_COMPONENT = "v"
"""The component label of a particle's output weight; the others (u0 .. u{d-1}, b) are its hidden weights."""


@xr.register_dataset_accessor("gnflow")
class GnflowAccessor:
    """``ds.gnflow``: the run stored in a gnflow trajectory dataset.

    Parameters
    ----------
    ds:
        A dataset written by gnflow (``gnflow run``, :func:`gnflow.simulate`, ``gnflow observe``);
        files of gnflow 0.1.0 too.
    """

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def _weights(self) -> xr.DataArray:
        if "weights" not in self._ds:
            raise ValueError("the dataset has no weights variable: not a trajectory written by gnflow run")
        return component_labels(self._ds)["weights"]

    def final(self) -> xr.Dataset:
        """The last saved state's scalars: every variable of dimension ``t`` alone at the last saved time.

        Returns
        -------
        xarray.Dataset
            0-d variables (``train_loss``, ``test_loss``, ``gram_eigmin``, ``gram_eigmax``,
            ``damping``, ``nfe``, observables over t, ...) with their attributes, and the scalar
            coordinate ``t``: the time of that state.
        """
        ds = self._ds
        if ds.sizes.get("t", 0) == 0:
            raise ValueError("the dataset has no saved times (dimension t is missing or empty)")
        names = [name for name, var in ds.data_vars.items() if var.dims == ("t",)]
        return ds[names].isel(t=-1)

    @property
    def output_weights(self) -> xr.DataArray:
        """The output weights v_i of the particles: (t, particle)."""
        return self._weights().sel(component=OUTPUT_COMPONENT)

    @property
    def hidden_weights(self) -> xr.DataArray:
        """The hidden weights (u_i, b_i) of the particles: (t, particle, component), components u0 .. u{d-1}, b."""
        return self._weights().drop_sel(component=OUTPUT_COMPONENT)

    @property
    def config(self) -> RunConfig:
        """The :class:`~gnflow.config.RunConfig` of the run, parsed from ``gnflow_config``."""
        return run_config_of(self._ds)

    @property
    def status(self) -> RunResult:
        """How the run ended: a :class:`~gnflow.status.RunResult` parsed from ``gnflow_status``."""
        return dataset_result(self._ds)

    def plot(self) -> Figure:
        """The summary figure of the run (what ``gnflow plot FILE.nc`` draws), see :func:`gnflow.plot.plot_run`."""
        from gnflow.plot import plot_run

        return plot_run(self._ds)
