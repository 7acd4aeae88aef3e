"""Fit a model script by SVI and write its posterior-diagnostics report.

A model script is a Python file defining ``model(**data)``, and optionally ``guide(**data)``
(used with ``--guide custom``) and ``data()`` (overridden by ``--data FILE``, a ``.json`` or a
posteriordb ``.json.zip``). The fit starts from a Laplace approximation at the MAP and runs in
coordinates whitened by it; the diagnosis draws ``--draws`` samples from the guide (PSIS
k-hat, importance-weighted bounds, CUBO, error bounds) and compares with ``--reference``
(reference draws, an ArviZ ``.nc`` file, ``nuts``, or ``none``).

A script that declares its data plate (``DATA_PLATE``, or ``--set data_plate=NAME``) can be
fitted on minibatches (``--set batch_size=B``) and data-parallel: ``--nproc N``, or
``torchrun --nproc-per-node N -m ppl_models fit SCRIPT``. Every rank fits, makes its share of
the diagnosis's guide draws and runs its share of the mode search's starts; rank 0 alone does
the rest and writes the run directory.
"""

from pathlib import Path

from .command import add_arguments, main
from .config import MODEL

__all__ = ["MODEL", "add_arguments", "main", "rebuild_report"]


def rebuild_report(run_dir: Path) -> Path:
    """Regenerate the figures and ``report.html`` of a finished fit run from its files."""
    from .run import rebuild_report as rebuild  # torch: imported only when a report is redrawn

    return rebuild(run_dir)
