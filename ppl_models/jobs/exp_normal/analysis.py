"""Every number of the exponential-normal report.

The generic diagnosis (:func:`~ppl_models.vi.diagnose.diagnose`) checks the fit against the exact
posterior as its reference (:func:`exact_reference`): PSIS k-hat, importance ESS,
importance-weighted bounds, CUBO, d_2, VIABEL's error bounds, the per-parameter comparison and the
verdict. The closed forms add what only this model has: theta*, the exact ELBO, evidence and KL,
the grid posterior, and each guide family's optimum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ... import diagnostics
from ...exp_normal import closed_forms, options, pyro_model
from ...vi.references import Reference
from .config import MODEL
from .fitting import Fit

if TYPE_CHECKING:
    from .config import ExpNormalConfig

IW_DRAWS = 200_000  # guide draws of the diagnosis: every weight-based number comes from them
REFERENCE_CHAINS = 4
# The keys of the generic diagnosis that this report keeps under its own meaning.
_OWN_KEYS = ("status", "model", "guide", "fit_seconds", "steps")


def exact_reference(x, rate, draws: int) -> Reference:
    """Independent draws of the exact posterior (the truncated normal), as the reference of
    :func:`~ppl_models.vi.diagnose.diagnose`: site ``z``, cut into pseudo-chains.

    Draws with torch's global generator (seed it first for reproducible draws).
    """
    z = closed_forms.exact_posterior(x, rate).sample((int(draws),)).numpy()
    chains = REFERENCE_CHAINS if len(z) % REFERENCE_CHAINS == 0 else 1
    return Reference(
        draws={"z": z.reshape(chains, -1)},
        source=f"exact posterior (normal truncated to z > 0), {len(z):,} independent draws",
    )


def analyse(x: np.ndarray, config: ExpNormalConfig, fitted: Fit) -> tuple[dict, object]:
    """All numbers of the report, and the InferenceData of the variational, grid and exact
    posteriors.

    The summary holds the closed-form numbers of this model and, after them, every key of the
    generic diagnosis (those of ``ppl-models fit``'s ``summary.json``: ``elbo``, ``cubo2``,
    ``d2``, ``error_bounds``, ``parameters``, ``verdict`` ...). ``psis_khat``, ``importance_ess``,
    ``iw_bounds`` and ``draws`` are the diagnosis's, from its :data:`IW_DRAWS` guide draws.
    The InferenceData is the diagnosis's (``posterior``, ``sample_stats``,
    ``reference_posterior``) with the groups ``posterior_variational``, ``posterior_grid`` and
    ``posterior_exact`` added.
    """
    from ...vi.diagnose import diagnose

    rate = config.rate
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    exact = closed_forms.exact_posterior(x, rate)
    q = pyro_model.guide_distribution(config.guide, fitted.params, validate_args=False)
    grid = closed_forms.grid_posterior(x, rate, n_points=config.grid_points)

    def log_q(z: np.ndarray) -> np.ndarray:
        return q.log_prob(torch.as_tensor(z, dtype=torch.float64)).numpy()

    reference = exact_reference(x, rate, config.draws)
    diagnosis = diagnose(fitted.svi, reference, draws=IW_DRAWS, seed=config.seed, progress=False)
    generic = diagnosis.summary
    idata = diagnosis.idata
    z_grid_draws = grid.sample(config.draws, rng)
    idata.add_groups(
        {
            "posterior_variational": idata.posterior,
            "posterior_grid": diagnostics.inference_data(z_grid_draws).posterior,
            "posterior_exact": idata.reference_posterior,
        }
    )
    draws = {
        "variational": idata.posterior["z"].values.ravel(),
        "grid": z_grid_draws,
        "exact": reference.draws["z"].ravel(),
    }

    exact_mean, exact_sd = float(exact.mean), float(exact.variance.sqrt())
    q_lo, q_hi = (float(exact.icdf(torch.tensor(p, dtype=torch.float64))) for p in (0.03, 0.97))
    table = {}
    for method, values in draws.items():
        row = diagnostics.summary_row(values)
        row["mean_error"] = row["mean"] - exact_mean
        row["sd_error"] = row["sd"] - exact_sd
        table[method] = row
    table["exact (closed form)"] = {"mean": exact_mean, "sd": exact_sd, "q_3%": q_lo, "q_97%": q_hi}

    theta_star = closed_forms.optimal_theta(x, rate)
    log_evidence = closed_forms.log_evidence(x, rate)
    theta_svi = fitted.params.get("theta")
    families = {}
    for family in options.GUIDE_FAMILIES:
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
        "psis_khat": generic["psis_khat"],
        "psis_khat_threshold": generic["psis_khat_threshold"],
        "importance_ess": generic["importance_ess"],
        "draws": generic["draws"],
        "iw_bounds": generic["iw_bounds"],
        "iw_bounds_se": generic["iw_bounds_se"],
        "wasserstein1_to_exact": diagnostics.wasserstein1(q, exact),
        "ks_to_exact": diagnostics.ks_distance(q, exact),
        "grid_max_abs_pdf_error": float(np.max(np.abs(grid.pdf(z_grid) - exact_pdf))),
        "posterior_table": table,
        "fit_seconds": fitted.seconds,
        "steps": len(fitted.losses),
    }
    summary.update({k: v for k, v in generic.items() if k not in summary and k not in _OWN_KEYS})
    summary["notes"] = [
        f"The {config.guide} guide started from make_guide's data-informed guess."
        if note.startswith("The custom guide was fitted as given")
        else note
        for note in summary.get("notes", [])
    ]
    return summary, idata
