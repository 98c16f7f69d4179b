"""Old names of :mod:`gnflow.grid`, kept as aliases so that existing code keeps working.

Before sweep grids had a module of their own, the grid file of ``gnflow sweep`` was called a
*study file* and lived here. A *study* is now a scripted reproduction (:mod:`gnflow.studies`);
the grid of runs is a :class:`~gnflow.grid.SweepGrid`. The aliases:

========================  ==================================
old name                  new name
========================  ==================================
``Study``                 :class:`gnflow.grid.SweepGrid`
``StudyRun``              :class:`gnflow.grid.SweepRun`
``load_study``            :func:`gnflow.grid.load_grid`
``study_from_dict``       :func:`gnflow.grid.grid_from_dict`
========================  ==================================
"""

from __future__ import annotations

from gnflow.grid import RUN_DIM, SweepGrid, SweepRun, dimension_name, grid_from_dict, load_grid

__all__ = ["RUN_DIM", "Study", "StudyRun", "dimension_name", "load_study", "study_from_dict"]

Study = SweepGrid
StudyRun = SweepRun
load_study = load_grid
study_from_dict = grid_from_dict
