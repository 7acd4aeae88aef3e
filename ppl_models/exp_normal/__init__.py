r"""The exponential-normal model: data, the truncated normal, model and guides, closed forms and
figures.

The model is

.. math::

    z \sim \mathrm{Exponential}(\lambda), \qquad x_i \mid z \sim \mathcal{N}(z, 1),
    \quad i = 1, \dots, N,

whose exact posterior is :math:`\mathcal{N}((S - \lambda)/N, 1/N)` truncated to :math:`z > 0`
(:math:`S = \sum_i x_i`); the evidence, the ELBO of the notebook's guide
:math:`q_\theta(z) = \mathrm{Exponential}(\theta)` and its optimum are closed-form too. Closed
forms work in float64 NumPy; the model and guides are Pyro code that runs on any device.

Modules: ``options`` (guide families, the rate check; no torch), ``data`` (validation, files,
simulation), ``distributions`` (the truncated normal), ``pyro_model`` (the Pyro model and its
guide families), ``closed_forms`` (optimal theta, ELBO, evidence, KL, exact and grid posteriors,
quadrature for any guide) and ``figures``. The job ``ppl-models exp-normal`` (its
configuration, fit, numbers and report page) is :mod:`ppl_models.jobs.exp_normal`; this package
knows nothing of it.

Every public name of ``data``, ``distributions``, ``pyro_model`` and ``closed_forms`` (and
``GUIDE_FAMILIES``, ``SUPPORTED_SUFFIXES``, ``validate_rate``) is available from the package,
``exp_normal.simulate`` and so on. They are imported on first use, so importing the package (or
its torch-free ``options``) imports neither torch nor Pyro.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "options": ("GUIDE_FAMILIES", "SUPPORTED_SUFFIXES", "validate_rate"),
    "data": ("load_observations", "simulate", "validate_observations"),
    "distributions": ("TruncatedNormal",),
    "pyro_model": (
        "ExponentialGuide",
        "FamilyGuide",
        "GammaGuide",
        "LogNormalGuide",
        "TruncatedNormalGuide",
        "guide_distribution",
        "make_guide",
        "model",
    ),
    "closed_forms": (
        "elbo",
        "elbo_of",
        "exact_posterior",
        "grid_posterior",
        "kl_of",
        "kl_to_posterior",
        "log_evidence",
        "log_joint",
        "optimal_guide_params",
        "optimal_theta",
    ),
}
_SOURCE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_SOURCE)


def __getattr__(name: str):
    module = _SOURCE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
