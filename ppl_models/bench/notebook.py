"""The source notebook's exponential-normal fit, written faithfully: the benchmark's baseline.

``VariationalModel`` of the notebook estimates the ELBO of the Exponential(theta) guide with 128
particles in a Python loop and takes SGD steps of size 1e-4 in float32.
"""

from __future__ import annotations

import time

import numpy as np
import torch


class NotebookVariationalModel(torch.nn.Module):
    """The notebook's Exponential-guide ELBO, one particle at a time (the baseline)."""

    N = 128

    def __init__(self):
        super().__init__()
        self.param = torch.nn.Parameter(data=torch.tensor([1.0]))
        self.sampling_dist = torch.distributions.Exponential(1.0)
        self.prior = torch.distributions.Exponential(1.0)

    def elbo(self, data: torch.Tensor) -> torch.Tensor:
        sampled_z = self.sampling_dist.sample((self.N,))
        reparametrized_z = sampled_z / self.param
        elbo = 0.0
        for z in reparametrized_z:
            log_p_z = self.prior.log_prob(z)
            log_data_given_z = torch.sum(torch.distributions.Normal(z, 1.0).log_prob(data))
            log_model = torch.distributions.Exponential(self.param).log_prob(z)
            elbo += log_p_z + log_data_given_z - log_model
        return elbo / self.N


def run_notebook_loop(
    x: np.ndarray, steps: int = 1000, lr: float = 1e-4
) -> tuple[np.ndarray, np.ndarray]:
    """Theta and elapsed seconds after every step of the notebook's loop."""
    model = NotebookVariationalModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    data = torch.as_tensor(x, dtype=torch.float32)
    thetas, elapsed = np.empty(steps), np.empty(steps)
    start = time.perf_counter()
    for i in range(steps):
        optimizer.zero_grad()
        loss = -model.elbo(data)
        loss.backward()
        optimizer.step()
        thetas[i] = model.param.item()
        elapsed[i] = time.perf_counter() - start
    return thetas, elapsed
