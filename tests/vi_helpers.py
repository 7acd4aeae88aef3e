"""Small SviFit-like fits and Gaussian problems with exact posteriors, for the vi tests."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyro
import pyro.distributions as dist
import torch


@dataclass
class FakeFit:
    """The attributes of ``ppl_models.vi.fitting.SviFit`` that ``diagnose`` reads."""

    model: object
    guide: object
    data: dict
    guide_name: str = "custom"
    losses: np.ndarray = field(default_factory=lambda: np.linspace(10.0, 1.0, 50))
    averaged_elbo: float | None = None
    converged: bool = True
    convergence: dict = field(
        default_factory=lambda: {"rule": "relative ELBO change < 0.01 (test)", "step": 40}
    )
    vectorized: bool = True
    max_plate_nesting: int = 1
    notes: list = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float64


def gaussian_problem(d: int = 3, n: int = 5, seed: int = 0):
    """mu_j ~ N(0, 10^2), y_ij ~ N(mu_j, 1): the exact posterior is N(m_j, s^2) per j."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.arange(d, dtype=torch.float64)
    prior_sd = 10.0
    post_var = 1.0 / (1.0 / prior_sd**2 + n)
    post_mean = post_var * y.sum(0)

    def model(y):
        with pyro.plate("d", y.shape[-1]):
            mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), prior_sd))
            with pyro.plate("n", y.shape[0], dim=-2):
                pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return model, {"y": y}, post_mean, math.sqrt(post_var)


def normal_guide(loc: torch.Tensor, scale: torch.Tensor):
    """A fixed mean-field normal guide for ``gaussian_problem``'s ``mu``."""

    def guide(y):
        with pyro.plate("d", y.shape[-1]):
            pyro.sample("mu", dist.Normal(loc, scale))

    return guide
