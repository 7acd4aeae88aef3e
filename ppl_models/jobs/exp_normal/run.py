"""The run of ``ppl-models exp-normal``: data, fit, diagnosis, report, in one run directory.

:func:`execute` writes the run-directory contract of :mod:`ppl_models.runs` (``config.toml``,
``env.json``, ``metrics.jsonl``, ``posterior.nc``, ``observations.json``, ``figures/``,
``report.html`` and, last, ``summary.json``); the fit is
:mod:`ppl_models.jobs.exp_normal.fitting`'s, the numbers
:mod:`ppl_models.jobs.exp_normal.analysis`'s and the page
:mod:`ppl_models.jobs.exp_normal.report`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...exp_normal.data import load_observations, simulate
from ...runs import Run, atomic_save, atomic_write_json
from ...svi import resolve_device, seed_everything
from .analysis import analyse
from .config import ExpNormalConfig
from .fitting import fit
from .report import build_report


def observations(config: ExpNormalConfig) -> tuple[np.ndarray, dict]:
    """The data of the run and how it was obtained (file, or simulated as the notebook does)."""
    if config.data:
        x = load_observations(Path(config.data))
        return x, {"source": "file", "path": str(config.data), "count": len(x)}
    z, x = simulate(config.rate, config.n_obs, config.seed)
    return x, {"source": "simulated", "z_true": z, "count": len(x), "values": x.tolist()}


def execute(
    config: ExpNormalConfig, config_name: str, out: Path | None = None, progress: bool = True
) -> Run:
    """Do the whole run: data, fit, diagnostics, figures, report. Returns the finished run."""
    x, source = observations(config)
    device = resolve_device(config.device)
    with Run.create(config_name, out) as run:
        run.write_config(config)
        run.write_env(seed=config.seed, device=str(device))
        seed_everything(config.seed)
        x_t = torch.as_tensor(x, dtype=torch.float64, device=device)
        fitted = fit(x_t, config, run=run, progress=progress)
        summary, idata = analyse(x, config, fitted)
        summary["observations"] = source
        summary["device"] = str(device)
        atomic_save(run.file("posterior.nc"), lambda tmp: idata.to_netcdf(str(tmp)))
        atomic_write_json(run.file("observations.json"), {"x": x.tolist(), "rate": config.rate})
        build_report(run.path, summary)
        run.write_summary(summary)  # last: a summary with status "complete" means all is there
    return run
