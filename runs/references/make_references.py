"""Reference posteriors of the model suite in ``runs/``, in posteriordb's format.

Each model script of the suite (``KIND`` and ``REFERENCE`` at its top) has a *twin* here: the
same model written again for NumPyro (an optional benchmark extra, never imported by the package
or by a script), with the same priors, likelihood and site names, on the data of the script's
own ``data()`` and with the constants read from the script. Discrete latent sites are summed
out by hand in the twin (log-sum-exp over mixture components, the forward algorithm of an HMM,
the closed-form Cormack-Jolly-Seber likelihood), so the reference does not rest on Pyro's
enumeration. The suite's tests check each twin against its script: equal log densities, up to
a constant, at random points (``tests/test_model_suite.py``, from the values recorded in
``suite.json``).

Where the twin's own geometry defeats NUTS, the sampler runs a reparametrized twin with the
same posterior (``Spec.sampler``), whose draws of the script's sites come back as deterministic
sites: the non-centred baseball model, and GARCH's ``beta1 = (1 - alpha1) u``. Neal's funnel
and the lighthouses need no sampler at all: their references are exact independent draws.

Every NUTS reference is 4 chains of 1,000 warm-up and 1,000 kept draws (more where the spec
says), in float64. The run stops, writing nothing, unless every element's rank-normalized split
R-hat is at most 1.01, every bulk ESS at least 400, and no transition diverged (elements that
are constant in every draw, such as the upper triangle of a Cholesky factor, have no R-hat and
are skipped). Draws are rounded to 7 significant digits.

    python runs/references/make_references.py                 # every model of the suite
    python runs/references/make_references.py --only gmm_enum,hmm_enum
    python runs/references/make_references.py --list

Writes ``runs/references/<name>.json.zip`` (a list of chains, each mapping ``site``,
``site[i]``, ``site[i,j]`` (1-based) to draws) and records the run's checks in
``runs/references/suite.json``, with the twin's log density at three random points (which
the suite's tests compare with the script's; ``--twin-check-only`` recomputes just those).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = HERE.parent
RECORD = HERE / "suite.json"
CHAINS = 4
MAX_R_HAT, MIN_ESS = 1.01, 400.0


# --------------------------------------------------------------------------- scripts and data


def load_script(name: str):
    """Import ``runs/<name>.py`` (a plain import: the generator needs no part of the package)."""
    path = RUNS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_suite_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def jax_data(data: dict) -> dict:
    """The script's data as the fit converts them, for JAX: numbers stay numbers, lists become
    int64 arrays when every element is an integer, else float64."""
    import jax.numpy as jnp

    out = {}
    for key, value in data.items():
        if isinstance(value, list | tuple):
            array = np.asarray(value)
            integer = np.issubdtype(array.dtype, np.integer)
            out[key] = jnp.asarray(array, dtype=jnp.int64 if integer else jnp.float64)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- twins
#
# Each twin is ``twin(d, s)``: ``d`` the script's data (``jax_data``), ``s`` the script module.


def _np():
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd
    from jax.scipy.special import logsumexp

    return jax, jnp, numpyro, nd, logsumexp


def gmm_enum(d, s):
    """Mixture; the assignments summed out: log p(x_i) = logsumexp_k log w_k + log N(x_i)."""
    _, jnp, numpyro, nd, logsumexp = _np()
    x = d["x"]
    weights = numpyro.sample("weights", nd.Dirichlet(0.5 * jnp.ones(s.K)))
    scale = numpyro.sample("scale", nd.LogNormal(0.0, 2.0))
    with numpyro.plate("components", s.K):
        locs = numpyro.sample("locs", nd.Normal(jnp.asarray(s.LOC_PRIOR), s.LOC_PRIOR_SCALE))
    terms = jnp.log(weights) + nd.Normal(locs, scale).log_prob(x[:, None])
    numpyro.factor("obs", logsumexp(terms, axis=-1).sum())


def hmm_enum(d, s):
    """HMM; the states summed out by the forward algorithm, starting from x_{-1} = 0."""
    _, jnp, numpyro, nd, logsumexp = _np()
    seq = d["sequences"]  # (sequence, time, tone)
    prior = s.EMISSION_PRIOR
    probs_x = numpyro.sample("probs_x", nd.Dirichlet(0.9 * jnp.eye(s.HIDDEN) + 0.1).to_event(1))
    probs_y = numpyro.sample(
        "probs_y", nd.Beta(jnp.asarray(prior["a"]), jnp.asarray(prior["b"])).to_event(2)
    )
    y = seq[:, :, None, :]  # (sequence, time, state, tone)
    log_emit = (y * jnp.log(probs_y) + (1 - y) * jnp.log1p(-probs_y)).sum(-1)
    log_trans = jnp.log(probs_x)
    alpha = log_trans[0] + log_emit[:, 0]
    for t in range(1, seq.shape[1]):
        alpha = logsumexp(alpha[:, :, None] + log_trans, axis=1) + log_emit[:, t]
    numpyro.factor("obs", logsumexp(alpha, axis=-1).sum())


def cjs_dipper(d, s):
    """CJS likelihood in closed form, conditional on first capture: for an animal first seen at
    f and last at l, phi^(l - f) rho^(captures after f) (1 - rho)^(misses up to l) chi_l, with
    chi_{T-1} = 1 and chi_t = (1 - phi) + phi (1 - rho) chi_{t+1}."""
    _, jnp, numpyro, nd, _ = _np()
    ch = np.asarray(d["capture_history"])
    n, T = ch.shape
    phi = numpyro.sample("phi", nd.Uniform(0.0, 1.0))
    rho = numpyro.sample("rho", nd.Uniform(0.0, 1.0))
    seen = ch.any(axis=1)
    first = ch.argmax(axis=1)
    last = T - 1 - ch[:, ::-1].argmax(axis=1)
    t = np.arange(T)
    between = (t > first[:, None]) & (t <= last[:, None])
    survived = between.sum(axis=1)
    captured = (between & (ch == 1)).sum(axis=1)
    chi = [jnp.ones(())]
    for _ in range(T - 1):
        chi.insert(0, (1 - phi) + phi * (1 - rho) * chi[0])
    log_chi = jnp.log(jnp.stack(chi))
    log_lik = (
        survived * jnp.log(phi)
        + captured * jnp.log(rho)
        + (survived - captured) * jnp.log1p(-rho)
        + log_chi[last]
    )
    numpyro.factor("obs", jnp.where(seen, log_lik, 0.0).sum())


def bayesian_regression_module(d, s):
    _, jnp, numpyro, nd, _ = _np()
    x, y = d["x"], d["y"]
    weight = numpyro.sample("linear.weight", nd.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
    bias = numpyro.sample("linear.bias", nd.Normal(0.0, 10.0).expand([1]).to_event(1))
    sigma = numpyro.sample("sigma", nd.Uniform(0.0, 10.0))
    mean = (x @ weight.T + bias)[:, 0]
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", nd.Normal(mean, sigma), obs=y)


def bnn_module(d, s):
    jax, jnp, numpyro, nd, _ = _np()
    x, y, h = d["x"], d["y"], s.HIDDEN
    b1 = numpyro.sample("layer1.bias", nd.Normal(0.0, 1.0).expand([h]).to_event(1))
    w1 = numpyro.sample("layer1.weight", nd.Normal(0.0, 1.0).expand([1, h]).to_event(2))
    b2 = numpyro.sample("layer2.bias", nd.Normal(0.0, 1.0).expand([1]).to_event(1))
    w2 = numpyro.sample("layer2.weight", nd.Normal(0.0, 1.0).expand([h, 1]).to_event(2))
    obs_scale = numpyro.sample("obs_scale", nd.LogNormal(0.0, 1.0))
    mean = numpyro.deterministic("mean", (b2 + jnp.tanh(b1 + x @ w1) @ w2)[:, 0])
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", nd.Normal(mean, obs_scale), obs=y)


def regression_default_dtype(d, s):
    _, jnp, numpyro, nd, _ = _np()
    x, y = d["x"], d["y"]
    a = numpyro.sample("a", nd.Normal(0.0, 10.0))
    b = numpyro.sample("b", nd.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", nd.Uniform(0.0, 10.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", nd.Normal(a + x @ b, sigma), obs=y)


def gp_regression(d, s):
    _, jnp, numpyro, nd, _ = _np()
    x, y = d["x"], d["y"]
    variance = numpyro.sample("variance", nd.LogNormal(0.0, 1.0))
    lengthscale = numpyro.sample("lengthscale", nd.LogNormal(0.0, 1.0))
    noise = numpyro.sample("noise", nd.LogNormal(-2.0, 1.0))
    d2 = (x[:, None] - x[None, :]) ** 2
    cov = variance * jnp.exp(-0.5 * d2 / lengthscale**2) + (noise + s.JITTER) * jnp.eye(len(x))
    numpyro.sample("y", nd.MultivariateNormal(jnp.zeros(len(x)), covariance_matrix=cov), obs=y)


def _garch_likelihood(y, sigma1, mu, alpha0, alpha1, beta1):
    jax, jnp, numpyro, nd, _ = _np()

    def step(variance, shock2):
        variance = alpha0 + alpha1 * shock2 + beta1 * variance
        return variance, variance

    start = jnp.asarray(float(sigma1) ** 2)
    _, rest = jax.lax.scan(step, start, (y[:-1] - mu) ** 2)
    sigma = jnp.sqrt(jnp.concatenate([start[None], rest]))
    with numpyro.plate("time", y.shape[0]):
        numpyro.sample("y", nd.Normal(mu, sigma), obs=y)


def garch11(d, s):
    _, _, numpyro, nd, _ = _np()
    mu = numpyro.sample("mu", nd.Normal(0.0, 1.0))
    alpha0 = numpyro.sample("alpha0", nd.HalfNormal(1.0))
    alpha1 = numpyro.sample("alpha1", nd.Uniform(0.0, 1.0))
    beta1 = numpyro.sample("beta1", nd.Uniform(0.0, 1.0 - alpha1))
    _garch_likelihood(d["y"], d["sigma1"], mu, alpha0, alpha1, beta1)


def garch11_fixed_support(d, s):
    """``garch11`` with beta1 = (1 - alpha1) u, u ~ Uniform(0, 1): the same prior on beta1
    (density 1 / (1 - alpha1) on (0, 1 - alpha1)), on a support that does not move."""
    _, _, numpyro, nd, _ = _np()
    mu = numpyro.sample("mu", nd.Normal(0.0, 1.0))
    alpha0 = numpyro.sample("alpha0", nd.HalfNormal(1.0))
    alpha1 = numpyro.sample("alpha1", nd.Uniform(0.0, 1.0))
    u = numpyro.sample("beta1_fraction", nd.Uniform(0.0, 1.0))
    beta1 = numpyro.deterministic("beta1", (1.0 - alpha1) * u)
    _garch_likelihood(d["y"], d["sigma1"], mu, alpha0, alpha1, beta1)


def lkj_mvn(d, s):
    _, jnp, numpyro, nd, _ = _np()
    y = d["y"]
    n, dim = y.shape
    theta = numpyro.sample("theta", nd.HalfCauchy(jnp.ones(dim)).to_event(1))
    L_omega = numpyro.sample("L_omega", nd.LKJCholesky(dim, 1.0))
    L_Omega = jnp.sqrt(theta)[:, None] * L_omega
    with numpyro.plate("observations", n):
        numpyro.sample("obs", nd.MultivariateNormal(jnp.zeros(dim), scale_tril=L_Omega), obs=y)


def neals_funnel(d, s):
    _, jnp, numpyro, nd, _ = _np()
    y = numpyro.sample("y", nd.Normal(0.0, 3.0))
    with numpyro.plate("dims", d["dim"]):
        numpyro.sample("x", nd.Normal(0.0, jnp.exp(y / 2)))


def neals_funnel_exact(d, s, rng, chains, draws):
    """Independent draws of the funnel: y ~ Normal(0, 3), then x | y ~ Normal(0, exp(y / 2))."""
    y = rng.normal(0.0, 3.0, size=(chains, draws))
    x = rng.normal(size=(chains, draws, d["dim"])) * np.exp(y / 2)[..., None]
    return {"y": y, "x": x}


def lighthouses(d, s):
    _, _, numpyro, nd, _ = _np()
    x = d["x"]
    with numpyro.plate("lighthouses", x.shape[-1]):
        alpha = numpyro.sample("alpha", nd.Normal(0.0, s.PRIOR_SD))
        with numpyro.plate("flashes", x.shape[-2], dim=-2):
            numpyro.sample("x", nd.Cauchy(alpha, s.BETA), obs=x)


def lighthouses_exact(d, s, rng, chains, draws, points=400_001):
    """Independent draws of each alpha_j (independent a posteriori): the inverse of its CDF,
    the script's ``log_posterior`` integrated by the trapezoid rule on +/-10 prior sds."""
    grid = np.linspace(-10 * s.PRIOR_SD, 10 * s.PRIOR_SD, points)
    x = np.asarray(d["x"])
    alpha = np.empty((chains, draws, x.shape[-1]))
    for j in range(x.shape[-1]):
        log_p = s.log_posterior(grid, x[:, j])
        p = np.exp(log_p - log_p.max())
        cdf = np.concatenate([[0.0], np.cumsum((p[1:] + p[:-1]) / 2)])
        alpha[..., j] = np.interp(rng.uniform(size=(chains, draws)) * cdf[-1], cdf, grid)
    return {"alpha": alpha}


def baseball_logit(d, s):
    _, _, numpyro, nd, _ = _np()
    at_bats, hits = d["at_bats"], d["hits"]
    loc = numpyro.sample("loc", nd.Normal(-1.0, 1.0))
    scale = numpyro.sample("scale", nd.HalfCauchy(1.0))
    with numpyro.plate("num_players", at_bats.shape[0]):
        alpha = numpyro.sample("alpha", nd.Normal(loc, scale))
        numpyro.sample("obs", nd.Binomial(at_bats, logits=alpha), obs=hits)


def baseball_logit_noncentred(d, s):
    """``baseball_logit`` with alpha = loc + scale * a, a ~ Normal(0, 1): the same posterior of
    (loc, scale, alpha), without the funnel."""
    _, _, numpyro, nd, _ = _np()
    at_bats, hits = d["at_bats"], d["hits"]
    loc = numpyro.sample("loc", nd.Normal(-1.0, 1.0))
    scale = numpyro.sample("scale", nd.HalfCauchy(1.0))
    with numpyro.plate("num_players", at_bats.shape[0]):
        a = numpyro.sample("alpha_std", nd.Normal(0.0, 1.0))
        alpha = numpyro.deterministic("alpha", loc + scale * a)
        numpyro.sample("obs", nd.Binomial(at_bats, logits=alpha), obs=hits)


def baseball_pooled(d, s):
    _, _, numpyro, nd, _ = _np()
    at_bats, hits = d["at_bats"], d["hits"]
    m = numpyro.sample("m", nd.Uniform(0.0, 1.0))
    kappa = numpyro.sample("kappa", nd.Pareto(1.0, 1.5))
    with numpyro.plate("num_players", at_bats.shape[0]):
        phi = numpyro.sample("phi", nd.Beta(m * kappa, (1 - m) * kappa))
        numpyro.sample("obs", nd.Binomial(at_bats, probs=phi), obs=hits)


def robust_regression(d, s):
    _, jnp, numpyro, nd, _ = _np()
    x, y = d["x"], d["y"]
    alpha = numpyro.sample("alpha", nd.Normal(0.0, 5.0))
    beta = numpyro.sample("beta", nd.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", nd.HalfNormal(2.0))
    with numpyro.plate("obs", y.shape[0]):
        lam = numpyro.sample("lam", nd.Gamma(s.NU / 2, s.NU / 2))
        numpyro.sample("y", nd.Normal(alpha + beta * x, sigma / jnp.sqrt(lam)), obs=y)


def poisson_lognormal(d, s):
    _, jnp, numpyro, nd, _ = _np()
    x, counts = d["x"], d["counts"]
    b0 = numpyro.sample("b0", nd.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", nd.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    tau = numpyro.sample("tau", nd.HalfNormal(1.0))
    with numpyro.plate("obs", counts.shape[0]):
        eps = numpyro.sample("eps", nd.Normal(0.0, tau))
        numpyro.sample("counts", nd.Poisson(jnp.exp(b0 + x @ beta + eps)), obs=counts)


def negbin_glm(d, s):
    jax, _, numpyro, nd, _ = _np()
    features, counts = d["features"], d["counts"]
    n, p = features.shape
    scale = numpyro.sample("scale", nd.LogNormal(0.0, 1.0))
    coef = numpyro.sample("coef", nd.Normal(0.0, scale).expand([p]).to_event(1))
    rate = numpyro.deterministic("rate", jax.nn.softplus(features @ coef))
    concentration = numpyro.sample("concentration", nd.LogNormal(0.0, 1.0))
    with numpyro.plate("bins", n):
        numpyro.sample("counts", nd.GammaPoisson(concentration, rate), obs=counts)


def logistic_regression(d, s):
    _, _, numpyro, nd, _ = _np()
    X, y = d["X"], d["y"]
    beta = numpyro.sample("beta", nd.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", y.shape[0]):
        numpyro.sample("y", nd.Bernoulli(logits=X @ beta), obs=y)


# --------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class Spec:
    """How one script's reference is made.

    Attributes
    ----------
    twin
        The NumPyro twin, in the script's parametrization (what the tests compare).
    sampler
        The model NUTS runs, when not the twin: a reparametrization whose sample or
        deterministic sites include every site in ``keep``.
    keep
        The sites written; default: the twin's latent sample sites.
    exact
        ``exact(d, s, rng, chains, draws)``: independent draws instead of NUTS.
    init
        NUTS's initial point: ``"uniform"`` (NumPyro's default) or ``"median"`` (the median of
        prior draws, for mixtures whose labels the prior identifies).
    """

    twin: Callable
    sampler: Callable | None = None
    keep: tuple[str, ...] | None = None
    exact: Callable | None = None
    init: str = "uniform"
    target_accept: float = 0.8
    warmup: int = 1000
    draws: int = 1000
    thin: int = 1
    note: str = ""


SUITE: dict[str, Spec] = {
    "gmm_enum": Spec(gmm_enum, init="median"),
    "hmm_enum": Spec(hmm_enum, init="median"),
    "cjs_dipper": Spec(cjs_dipper),
    "bayesian_regression_module": Spec(bayesian_regression_module),
    "bnn_module": Spec(
        bnn_module,
        keep=("obs_scale", "mean"),
        target_accept=0.99,
        note="weights not identified (hidden-unit permutations and sign flips); the reference "
        "holds obs_scale and the network's values at the data",
    ),
    "regression_default_dtype": Spec(regression_default_dtype),
    "gp_regression": Spec(gp_regression),
    "garch11": Spec(
        garch11,
        sampler=garch11_fixed_support,
        keep=("mu", "alpha0", "alpha1", "beta1"),
        note="NUTS on beta1 = (1 - alpha1) u, u ~ Uniform(0, 1)",
    ),
    "lkj_mvn": Spec(lkj_mvn),
    "neals_funnel": Spec(neals_funnel, exact=neals_funnel_exact, note="exact independent draws"),
    "lighthouses": Spec(
        lighthouses, exact=lighthouses_exact, note="exact independent draws (inverse CDF)"
    ),
    "baseball_logit": Spec(
        baseball_logit,
        sampler=baseball_logit_noncentred,
        keep=("loc", "scale", "alpha"),
        target_accept=0.95,
        note="NUTS on the non-centred twin, alpha = loc + scale * alpha_std",
    ),
    "baseball_pooled": Spec(
        baseball_pooled,
        target_accept=0.95,
        thin=2,
        note="kappa's Pareto(1, 1.5) tail mixes slowly: 2,000 draws a chain, every second kept",
    ),
    "robust_regression": Spec(robust_regression),
    "poisson_lognormal": Spec(poisson_lognormal, target_accept=0.95),
    "negbin_glm": Spec(negbin_glm, keep=("scale", "coef", "concentration")),
    "logistic_regression": Spec(logistic_regression),
}


def latent_sites(model: Callable) -> list[str]:
    """The latent (non-observed) sample sites of a NumPyro model, in order."""
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(model, 0)).get_trace()
    return [
        name for name, site in trace.items() if site["type"] == "sample" and not site["is_observed"]
    ]


def element_draws(draws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``site`` or ``site[i,j]`` (1-based) -> ``(chain, draw)`` array, in posteriordb's names."""
    out = {}
    for name, value in draws.items():
        if value.ndim == 2:
            out[name] = value
            continue
        for index in np.ndindex(*value.shape[2:]):
            label = ",".join(str(i + 1) for i in index)
            out[f"{name}[{label}]"] = value[(slice(None), slice(None), *index)]
    return out


def check(elements: dict[str, np.ndarray]) -> dict:
    """Rank-normalized split R-hat and bulk/tail ESS (ArviZ, through the package's adapter) of
    every element that is not constant."""
    from ppl_models.diagnostics import summarize_draws

    varying = {k: v for k, v in elements.items() if np.ptp(v) > 0}
    stats = summarize_draws(varying)
    r_hat = {k: s["r_hat"] for k, s in stats.items()}
    bulk = {k: s["ess_bulk"] for k, s in stats.items()}
    tail = {k: s["ess_tail"] for k, s in stats.items()}
    # Monte Carlo errors in posterior sds: what a comparison with the reference can resolve
    # (heavy tails make the sd's error large however well the chains mix)
    mcse_mean = {k: s["mcse_mean"] / s["sd"] for k, s in stats.items()}
    mcse_sd = {k: s["mcse_sd"] / s["sd"] for k, s in stats.items()}
    worst_r_hat = max(r_hat, key=r_hat.get)
    worst_bulk = min(bulk, key=bulk.get)
    worst_mean = max(mcse_mean, key=mcse_mean.get)
    worst_sd = max(mcse_sd, key=mcse_sd.get)
    return {
        "max_r_hat": round(r_hat[worst_r_hat], 4),
        "max_r_hat_at": worst_r_hat,
        "min_ess_bulk": round(bulk[worst_bulk], 1),
        "min_ess_bulk_at": worst_bulk,
        "min_ess_tail": round(min(tail.values()), 1),
        "max_mcse_mean_over_sd": round(mcse_mean[worst_mean], 4),
        "max_mcse_mean_over_sd_at": worst_mean,
        "max_mcse_sd_over_sd": round(mcse_sd[worst_sd], 4),
        "max_mcse_sd_over_sd_at": worst_sd,
        "constant_elements": sorted(set(elements) - set(varying)),
    }


def random_point(model: Callable, rng: np.random.Generator) -> dict:
    """Values of a NumPyro model's latent sites, uniform in (-2, 2) in the unconstrained space
    (NumPyro's default start for NUTS), drawn in order so that a support that depends on an
    earlier site (GARCH's ``beta1``) uses that site's value."""
    import jax.numpy as jnp
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to

    def draw(site):
        if site["type"] == "sample" and not site["is_observed"]:
            transform = biject_to(site["fn"].support)
            shape = transform.inverse_shape(site["fn"].shape())
            return transform(jnp.asarray(rng.uniform(-2.0, 2.0, size=shape)))
        return None

    trace = handlers.trace(handlers.substitute(model, substitute_fn=draw)).get_trace()
    return {
        name: np.asarray(site["value"])
        for name, site in trace.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def twin_log_density(model: Callable, point: dict) -> float:
    """The twin's log joint density at ``point`` (constrained values of its latent sites)."""
    import jax.numpy as jnp
    from numpyro.infer.util import log_density

    values = {k: jnp.asarray(v) for k, v in point.items()}
    return float(log_density(model, (), {}, values)[0])


def twin_check(name: str, seed: int = 0, n: int = 3) -> dict:
    """The twin's log density at ``n`` random points, which the suite's tests compare with the
    script's own (Pyro's, its discrete sites enumerated) without needing NumPyro."""
    s = load_script(name)
    d = jax_data(s.data())

    def twin():
        SUITE[name].twin(d, s)

    rng = np.random.default_rng(seed)
    points = [random_point(twin, rng) for _ in range(n)]
    return {
        "points": [{k: v.tolist() for k, v in p.items()} for p in points],
        "log_density": [twin_log_density(twin, p) for p in points],
    }


def run_nuts(spec: Spec, d: dict, s, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """NUTS draws (chain, draw, *shape) of the spec's sites, and the number of divergences."""
    import jax
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_uniform

    sampler = spec.sampler or spec.twin

    def model():
        sampler(d, s)

    init = init_to_median(num_samples=15) if spec.init == "median" else init_to_uniform()
    kernel = NUTS(model, target_accept_prob=spec.target_accept, init_strategy=init)
    mcmc = MCMC(
        kernel,
        num_warmup=spec.warmup,
        num_samples=spec.draws * spec.thin,
        thinning=spec.thin,
        num_chains=CHAINS,
        chain_method="parallel" if jax.local_device_count() >= CHAINS else "sequential",
        progress_bar=False,
    )
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("diverging",))
    samples = mcmc.get_samples(group_by_chain=True)
    keep = spec.keep or latent_sites(lambda: spec.twin(d, s))
    draws = {name: np.asarray(samples[name], dtype=np.float64) for name in keep}
    divergent = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return draws, divergent


def write_reference(path: Path, elements: dict[str, np.ndarray]) -> None:
    """posteriordb's format: a zip holding one JSON list of chains, draws to 7 digits."""
    chains = [
        {name: [float(f"{v:.7g}") for v in value[c]] for name, value in elements.items()}
        for c in range(CHAINS)
    ]
    tmp = path.with_name(path.name + ".tmp")
    # a fixed timestamp: the same draws give the same bytes, so a rerun changes nothing in git
    member = zipfile.ZipInfo(path.name.removesuffix(".zip"), date_time=(1980, 1, 1, 0, 0, 0))
    member.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(tmp, "w", compresslevel=9) as archive:
        archive.writestr(member, json.dumps(chains, separators=(",", ":")))
    tmp.replace(path)


def make(name: str, seed: int) -> dict:
    """Make, check and write one model's reference; its record for ``suite.json``."""
    import jax
    import numpyro

    spec = SUITE[name]
    s = load_script(name)
    d = jax_data(s.data())
    start = time.perf_counter()
    if spec.exact is not None:
        rng = np.random.default_rng(seed)
        draws = spec.exact(d, s, rng, CHAINS, spec.draws)
        divergent, method = 0, "exact independent draws"
    else:
        draws, divergent = run_nuts(spec, d, s, seed)
        method = (
            f"NumPyro {numpyro.__version__} NUTS, {CHAINS} chains of {spec.warmup} warm-up and "
            f"{spec.draws * spec.thin} draws"
            + (f" thinned by {spec.thin}" if spec.thin > 1 else "")
            + f", target acceptance {spec.target_accept}, init {spec.init}, float64"
        )
    seconds = time.perf_counter() - start
    elements = element_draws(draws)
    record = {
        "method": method,
        "note": spec.note,
        "seed": seed,
        "chains": CHAINS,
        "draws_per_chain": spec.draws,
        "divergences": divergent,
        **check(elements),
        "seconds": round(seconds, 1),
        "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__},
        "platform": platform.machine(),
        "twin_check": twin_check(name),
    }
    print(
        f"{name}: max R-hat {record['max_r_hat']:.4f} ({record['max_r_hat_at']}), min bulk ESS "
        f"{record['min_ess_bulk']:.0f} ({record['min_ess_bulk_at']}), min tail ESS "
        f"{record['min_ess_tail']:.0f}, divergences {divergent}, largest MCSE of an sd "
        f"{record['max_mcse_sd_over_sd']:.3f} sd ({record['max_mcse_sd_over_sd_at']}), "
        f"{seconds:.0f} s",
        flush=True,
    )
    failed = (
        not math.isfinite(record["max_r_hat"])
        or record["max_r_hat"] > MAX_R_HAT
        or record["min_ess_bulk"] < MIN_ESS
        or divergent
    )
    if failed:
        raise RuntimeError(f"{name}: the draws fail the reference's checks; nothing written")
    path = RUNS / s.REFERENCE
    write_reference(path, elements)
    record["file"] = path.relative_to(RUNS).as_posix()
    record["bytes"] = path.stat().st_size
    print(f"{name}: wrote {path} ({record['bytes'] / 1e6:.2f} MB)", flush=True)
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated script names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the suite and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--twin-check-only",
        action="store_true",
        help="recompute only the twins' log densities at random points (no NUTS)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for name, spec in SUITE.items():
            print(f"{name}: {spec.note or 'NUTS on the twin'}")
        return 0
    names = list(SUITE) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"unknown names {', '.join(unknown)}; known: {', '.join(SUITE)}")
    import numpyro

    numpyro.set_host_device_count(CHAINS)
    numpyro.enable_x64()
    records = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    failures = []
    for name in names:
        try:
            if args.twin_check_only:
                if name not in records:
                    raise RuntimeError(f"{name}: no record yet; make its reference first")
                records[name]["twin_check"] = twin_check(name)
            else:
                records[name] = make(name, args.seed)
        except RuntimeError as err:
            print(err, file=sys.stderr, flush=True)
            failures.append(name)
            continue
        ordered = {k: records[k] for k in SUITE if k in records}
        RECORD.write_text(json.dumps(ordered, indent=1) + "\n")
    if failures:
        print(f"failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
