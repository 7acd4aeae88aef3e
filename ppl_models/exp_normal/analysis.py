"""Every number of the exponential-normal report: the fit against the exact and grid posteriors,
the closed forms, importance weights, and each guide family's optimum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import diagnostics
from . import closed_forms, pyro_model, settings
from .fitting import Fit
from .settings import MODEL

if TYPE_CHECKING:
    from ..jobs.exp_normal import ExpNormalConfig

IW_KS = (1, 10, 100, 1000)
IW_DRAWS = 200_000


def analyse(x: np.ndarray, config: ExpNormalConfig, fitted: Fit) -> tuple[dict, object]:
    """All numbers of the report, and the InferenceData of the three posteriors."""
    rate = config.rate
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    exact = closed_forms.exact_posterior(x, rate)
    q = pyro_model.guide_distribution(config.guide, fitted.params, validate_args=False)
    grid = closed_forms.grid_posterior(x, rate, n_points=config.grid_points)

    def log_q(z: np.ndarray) -> np.ndarray:
        return q.log_prob(torch.as_tensor(z, dtype=torch.float64)).numpy()

    z_q = q.sample((config.draws,)).numpy()
    log_joint_q, log_q_q = closed_forms.log_joint(z_q, x, rate), log_q(z_q)
    draws = {
        "variational": diagnostics.inference_data(z_q, log_joint=log_joint_q, log_q=log_q_q),
        "grid": diagnostics.inference_data(grid.sample(config.draws, rng)),
        "exact": diagnostics.inference_data(exact.sample((config.draws,)).numpy()),
    }
    idata = diagnostics.merge_methods(draws)

    exact_mean, exact_sd = float(exact.mean), float(exact.variance.sqrt())
    q_lo, q_hi = (float(exact.icdf(torch.tensor(p, dtype=torch.float64))) for p in (0.03, 0.97))
    table = {}
    for method, data in draws.items():
        row = diagnostics.summary_row(data.posterior["z"].values.ravel())
        row["mean_error"] = row["mean"] - exact_mean
        row["sd_error"] = row["sd"] - exact_sd
        table[method] = row
    table["exact (closed form)"] = {"mean": exact_mean, "sd": exact_sd, "q_3%": q_lo, "q_97%": q_hi}

    log_w = log_joint_q - log_q_q
    khat = float(diagnostics.psis_khat(log_w))
    z_iw = q.sample((IW_DRAWS,)).numpy()
    log_w_iw = closed_forms.log_joint(z_iw, x, rate) - log_q(z_iw)
    iw = {str(k): diagnostics.iw_bound(log_w_iw, k) for k in IW_KS}

    theta_star = closed_forms.optimal_theta(x, rate)
    log_evidence = closed_forms.log_evidence(x, rate)
    theta_svi = fitted.params.get("theta")
    families = {}
    for family in settings.GUIDE_FAMILIES:
        params = closed_forms.optimal_guide_params(family, x, rate)
        dist_f = pyro_model.guide_distribution(family, params)
        families[family] = {"params": params, "kl": closed_forms.kl_of(dist_f, x, rate)}

    z_grid = grid.points
    exact_pdf = exact.log_prob(torch.as_tensor(z_grid)).exp().numpy()
    summary = {
        "model": MODEL,
        "guide": config.guide,
        "guide_params_svi": fitted.params,
        "guide_params_optimal": families[config.guide]["params"],
        "theta_star": theta_star,
        "theta_svi": theta_svi,
        "theta_rel_error": None if theta_svi is None else abs(theta_svi - theta_star) / theta_star,
        "log_evidence_exact": log_evidence,
        "log_evidence_grid": grid.log_normalizer,
        "elbo_at_theta_star": float(closed_forms.elbo(theta_star, x, rate)),
        "elbo_at_svi": closed_forms.elbo_of(q, x, rate),
        "kl_at_theta_star": float(closed_forms.kl_to_posterior(theta_star, x, rate)),
        "kl_at_theta_star_grid": grid.kl_from(
            lambda z: (
                pyro_model.guide_distribution("exponential", {"theta": theta_star})
                .log_prob(torch.as_tensor(z))
                .numpy()
            )
        ),
        "kl_at_theta_svi": closed_forms.kl_of(q, x, rate),
        "kl_at_theta_svi_grid": grid.kl_from(log_q),
        "kl_by_family": {f: v["kl"] for f, v in families.items()},
        "guide_params_by_family": {f: v["params"] for f, v in families.items()},
        "psis_khat": khat,
        "psis_khat_threshold": diagnostics.khat_threshold(config.draws),
        "importance_ess": diagnostics.importance_ess(log_w),
        "draws": config.draws,
        "iw_bounds": {k: v[0] for k, v in iw.items()},
        "iw_bounds_se": {k: v[1] for k, v in iw.items()},
        "wasserstein1_to_exact": diagnostics.wasserstein1(q, exact),
        "ks_to_exact": diagnostics.ks_distance(q, exact),
        "grid_max_abs_pdf_error": float(np.max(np.abs(grid.pdf(z_grid) - exact_pdf))),
        "posterior_table": table,
        "fit_seconds": fitted.seconds,
        "steps": len(fitted.losses),
    }
    return summary, idata
