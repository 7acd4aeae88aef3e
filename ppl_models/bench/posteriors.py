r"""The package's test posteriors, each with the guide family to fit and, where one exists, an
independent truth to measure a fit against.

An entry (:class:`Posterior`) names a Pyro model, the data it is fitted to, the guide family
(``auto-normal``, ``auto-mvn``, ``auto-lowrank``), and a :class:`Truth`: the posterior mean and
sd of every scalar element it knows, from a closed form, a 1-D quadrature, or reference draws
(posteriordb's long Stan NUTS runs, the NumPyro NUTS files of ``runs/references/``). Elements
are named as :func:`ppl_models.vi.logweights.element_names` names them: ``mu``, ``beta[1]``.

Two kinds of entry:

- the **shipped model scripts** of ``runs/`` (:data:`SCRIPTS`, every one): read from a scripts
  folder (default ``runs/``, from the repository's root), with their posteriordb or NUTS
  reference; the model suite's scripts (:data:`MODEL_SUITE`, those with a ``KIND``) are
  imported and their data converted in float64, as ``ppl-models fit`` does on the CPU, and
  fitted with the guide family the suite names (their ``GUIDE``);
- the **package's own test posteriors**, written here after the tests that use them: the
  conjugate Gaussian of ``tests/vi_helpers.py``, the flat-prior linear regression of
  ``tests/test_vi_guides.py``, the hierarchical normal model of
  ``tests/test_vi_initialization.py`` (its group scale integrated on a grid), Neal's funnel
  (Neal 2003, "Slice sampling", section 8), and the bimodal posterior of
  ``tests/test_vi_modes.py``.

Every truth here is computed without the package's fitting code: closed forms in float64, a
trapezoid rule on a fine grid, or the sample moments of reference draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_SCRIPTS = Path("runs")  # the repository's model scripts, from its root


@dataclass(frozen=True)
class Truth:
    """Posterior moments of scalar elements: ``moments[name] = (mean, sd)``, and where they
    come from (``source``, in words)."""

    moments: dict[str, tuple[float, float]]
    source: str


@dataclass(frozen=True)
class Posterior:
    """A test posterior.

    Attributes
    ----------
    name
        Its name in the benchmark (``--models``).
    guide
        The guide family both fits use: ``auto-normal``, ``auto-mvn`` or ``auto-lowrank``.
    build
        ``build(scripts)`` -> ``(model, data)``: the model and the keyword arguments it is
        fitted to (``scripts``: the folder of the shipped model scripts).
    truth
        ``truth(scripts)`` -> :class:`Truth`, or None where no independent truth exists.
    about
        One line: the model and where its truth comes from.
    flat_prior
        True when a site has a flat (improper) prior, which Pyro's initialisers cannot sample.
    """

    name: str
    guide: str
    build: Callable[[Path], tuple[Callable, dict]]
    truth: Callable[[Path], Truth] | None
    about: str
    flat_prior: bool = False


# ----------------------------------------------------------------------------- shipped scripts


def _script(scripts: Path, name: str):
    from ..vi.script import load_script

    return load_script(Path(scripts) / f"{name}.py")


def _from_script(name: str) -> Callable[[Path], tuple[Callable, dict]]:
    def build(scripts: Path):
        script = _script(scripts, name)
        return script.model, script.load_data()

    return build


def reference_truth(path: str | Path, sites: tuple[str, ...] | None = None) -> Truth:
    """The sample means and sds of every element of reference draws (a file, or
    ``posteriordb:NAME``), over all chains; ``sites`` keeps only those sites. Elements that
    never vary (a Cholesky factor's fixed zeros and leading one) have no sd to measure an error
    in, and are left out."""
    from ..vi.compare import flatten_sites
    from ..vi.references import load_reference

    reference = load_reference(path)
    draws = {k: v for k, v in reference.draws.items() if sites is None or k in sites}
    moments = {
        name: (float(np.mean(x)), float(np.std(x)))
        for name, x in flatten_sites(draws, lead=2).items()
        if np.ptp(x) > 0
    }
    chains, per_chain = reference.chains, reference.draws_per_chain
    return Truth(moments, f"{reference.source} ({chains} chains x {per_chain} draws)")


def _posteriordb_truth(posterior: str) -> Callable[[Path], Truth]:
    return lambda scripts: reference_truth(f"posteriordb:{posterior}")


def _hierarchical_logistic(groups: int) -> Callable[[Path], tuple[Callable, dict]]:
    def build(scripts: Path):
        script = _script(scripts, "hierarchical_logistic")
        if groups == script.module.GROUPS:
            return script.model, script.load_data()
        return script.model, script.module.simulate(groups)

    return build


def _nuts_truth(reference: str) -> Callable[[Path], Truth]:
    """The moments of ``runs/references/<reference>.json.zip``, NumPyro NUTS draws."""

    def truth(scripts: Path):
        found = reference_truth(Path(scripts) / "references" / f"{reference}.json.zip")
        return Truth(found.moments, found.source.replace("posteriordb", "NumPyro NUTS", 1))

    return truth


def _suite_truth(name: str) -> Callable[[Path], Truth]:
    """The moments of the script's NUTS reference, with those of any site whose exact moments
    the script states (``TRUTH``: site -> mean and sd, the same for every element) replaced."""

    def truth(scripts: Path):
        found = _nuts_truth(name)(scripts)
        exact = getattr(_script(scripts, name).module, "TRUTH", {})
        if not exact:
            return found
        moments = {
            element: (exact[site]["mean"], exact[site]["sd"]) if site in exact else moment
            for element, moment in found.moments.items()
            for site in [element.split("[")[0]]
        }
        return Truth(moments, f"closed form for {', '.join(exact)}; else {found.source}")

    return truth


def _from_suite_script(name: str) -> Callable[[Path], tuple[Callable, dict]]:
    """A model-suite script and its data, imported and converted with float64 as torch's
    default dtype, as ``ppl-models fit`` imports a script on the CPU: a ``PyroModule`` built at
    import then has its priors in float64, and a model that casts its data to the default
    dtype sees float64 (both fits then run in float64)."""

    def build(scripts: Path):
        import torch

        from ..svi import default_dtype
        from ..vi.script import model_data

        with default_dtype(torch.float64):
            script = _script(scripts, name)
            return script.model, model_data(script.model, script.load_data())

    return build


def normal_mean_truth(x, sigma: float = 0.8, mu0: float = 0.0, tau0: float = 10.0) -> Truth:
    """``runs/normal_mean.py``: mu | x ~ Normal(m, s^2), 1/s^2 = 1/tau0^2 + N/sigma^2,
    m = s^2 (mu0/tau0^2 + sum(x)/sigma^2)."""
    x = np.asarray(x, dtype=np.float64)
    var = 1.0 / (1.0 / tau0**2 + len(x) / sigma**2)
    mean = var * (mu0 / tau0**2 + x.sum() / sigma**2)
    return Truth({"mu": (float(mean), math.sqrt(var))}, "closed form (conjugate normal)")


def _normal_mean_truth(scripts: Path) -> Truth:
    data = _script(scripts, "normal_mean").load_data()
    return normal_mean_truth(data["x"], data.get("sigma", 1.0))


# ----------------------------------------------------------------------------- test posteriors


def _conjugate_gaussian_parts(d: int = 3, n: int = 5, seed: int = 0):
    """``tests/vi_helpers.py``'s ``gaussian_problem``: mu_j ~ N(0, 10^2), y_ij ~ N(mu_j, 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.arange(d, dtype=torch.float64)
    return y


def conjugate_gaussian_model(y):
    """mu_j ~ N(0, 10^2) for j = 1..d; y_ij ~ N(mu_j, 1), i = 1..n (``y`` is ``(n, d)``)."""
    import pyro
    import pyro.distributions as dist

    with pyro.plate("d", y.shape[-1]):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("n", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _conjugate_gaussian_build(scripts: Path):
    return conjugate_gaussian_model, {"y": _conjugate_gaussian_parts()}


def _conjugate_gaussian_truth(scripts: Path) -> Truth:
    y = _conjugate_gaussian_parts().numpy()
    n = y.shape[0]
    var = 1.0 / (1.0 / 10.0**2 + n)
    mean = var * y.sum(0)
    moments = {f"mu[{j + 1}]": (float(m), math.sqrt(var)) for j, m in enumerate(mean)}
    return Truth(moments, "closed form (conjugate normal, per coordinate)")


def flat_regression_model(X, y, sigma):
    """y ~ Normal(X beta, sigma), a flat prior on beta (``tests/test_vi_guides.py``)."""
    import pyro
    import pyro.distributions as dist
    from pyro.distributions import constraints

    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (X.shape[-1],)))
    pyro.sample("y", dist.Normal(beta @ X.T, sigma).to_event(1), obs=y)


def _flat_regression_data(n: int = 30, d: int = 3, sigma: float = 0.5, seed: int = 1) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X[:, 1] += 0.8 * X[:, 0]  # a correlated posterior
    coef = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)[:d]
    y = X @ coef + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    return {"X": X, "y": y, "sigma": sigma}


def _flat_regression_truth(scripts: Path) -> Truth:
    """beta | y ~ N((X'X)^-1 X'y, sigma^2 (X'X)^-1)."""
    data = _flat_regression_data()
    X, y, s = data["X"].numpy(), data["y"].numpy(), data["sigma"]
    cov = np.linalg.inv(X.T @ X) * s**2
    mean = cov @ X.T @ y / s**2
    moments = {f"beta[{j + 1}]": (float(mean[j]), math.sqrt(cov[j, j])) for j in range(len(mean))}
    return Truth(moments, "closed form (least squares with a flat prior)")


HN_GROUPS, HN_PER_GROUP, HN_MU_SD, HN_SIGMA_SD = 30, 5, 5.0, 2.0


def hierarchical_normal_model(ybar, n):
    """mu ~ N(0, 5), sigma ~ HalfNormal(2), alpha_j ~ N(mu, sigma), the n observations of
    group j ~ N(alpha_j, 1), given through their means ybar_j ~ N(alpha_j, 1/n)
    (``tests/test_vi_initialization.py``)."""
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, HN_MU_SD))
    sigma = pyro.sample("sigma", dist.HalfNormal(HN_SIGMA_SD))
    with pyro.plate("groups", ybar.shape[-1]):
        alpha = pyro.sample("alpha", dist.Normal(mu, sigma))
        pyro.sample("ybar", dist.Normal(alpha, n**-0.5), obs=ybar)


def _hierarchical_normal_ybar(seed: int = 0, sigma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    alpha = rng.normal(0.5, sigma, HN_GROUPS)
    return alpha + rng.normal(0, 1, (HN_PER_GROUP, HN_GROUPS)).mean(0)


def _hierarchical_normal_build(scripts: Path):
    import torch

    return hierarchical_normal_model, {
        "ybar": torch.tensor(_hierarchical_normal_ybar()),
        "n": HN_PER_GROUP,
    }


def hierarchical_normal_truth(ybar, n: int = HN_PER_GROUP, points: int = 12_001) -> Truth:
    r"""Every element's posterior mean and sd, by a trapezoid rule over sigma on (0, 8].

    With mu and alpha integrated out, ybar | sigma ~ N(0, a I + b 1 1^T), a = sigma^2 + 1/n,
    b = 5^2 (its log density by the matrix determinant lemma); given sigma, mu | ybar is normal
    with precision 1/25 + J/a, and alpha_j | mu, ybar normal with precision P = 1/sigma^2 + n
    and mean (mu/sigma^2 + n ybar_j)/P, so E[alpha_j | sigma] and Var[alpha_j | sigma] are
    closed forms, mixed over sigma's grid posterior.
    """
    y = np.asarray(ybar, dtype=np.float64)
    J, b = len(y), HN_MU_SD**2
    s = np.linspace(8.0 / (points - 1), 8.0, points)[:, None]
    a = s**2 + 1.0 / n
    log_det = (J - 1) * np.log(a) + np.log(a + J * b)
    quad = (y @ y - b * y.sum() ** 2 / (a + J * b)) / a
    log_post = -0.5 * (log_det + quad) - s**2 / (2 * HN_SIGMA_SD**2)  # + log HalfNormal(s; 2)
    w = np.exp(log_post - log_post.max())[:, 0]
    w /= np.trapezoid(w, s[:, 0])

    def mix(mean, var):  # E and Var over the grid, by the laws of total expectation/variance
        m = np.trapezoid(w[:, None] * mean, s[:, 0], axis=0)
        second = np.trapezoid(w[:, None] * (var + mean**2), s[:, 0], axis=0)
        return m, np.sqrt(np.maximum(second - m**2, 0.0))

    mu_prec = 1.0 / b + J / a
    mu_mean, mu_var = (y.sum() / a) / mu_prec, 1.0 / mu_prec
    p = 1.0 / s**2 + n
    alpha_mean = (mu_mean / s**2 + n * y) / p
    alpha_var = 1.0 / p + mu_var / (s**2 * p) ** 2
    moments = {}
    m, sd = mix(mu_mean, mu_var)
    moments["mu"] = (float(m[0]), float(sd[0]))
    m, sd = mix(s, np.zeros_like(s))
    moments["sigma"] = (float(m[0]), float(sd[0]))
    m, sd = mix(alpha_mean, alpha_var)
    for j in range(J):
        moments[f"alpha[{j + 1}]"] = (float(m[j]), float(sd[j]))
    return Truth(moments, f"quadrature over sigma ({points:,} points) with closed forms given it")


def _hierarchical_normal_truth(scripts: Path) -> Truth:
    return hierarchical_normal_truth(_hierarchical_normal_ybar())


def neals_funnel_model():
    """y ~ N(0, 3), x ~ N(0, exp(y/2)) (Neal 2003, one x)."""
    import pyro
    import pyro.distributions as dist
    import torch

    y = pyro.sample("y", dist.Normal(0.0, 3.0))
    pyro.sample("x", dist.Normal(0.0, torch.exp(y / 2)))


def _funnel_truth(scripts: Path) -> Truth:
    """y ~ N(0, 3); x has mean 0 and variance E[exp(y)] = exp(9/2), so sd exp(9/4)."""
    return Truth(
        {"y": (0.0, 3.0), "x": (0.0, math.exp(9 / 4))},
        "closed form (y ~ N(0, 3); x: mean 0, sd e^(9/4))",
    )


BIMODAL_Y = (1.2, 2.5, 1.9, 2.2, 1.6, 2.8, 2.0, 1.7)
BIMODAL_M0, BIMODAL_S0 = 0.5, 3.0


def bimodal_model(y):
    r""":math:`\theta \sim N(0.5, 3)`, :math:`y_i \sim N(|\theta|, 1)`: one mode for each
    sign of :math:`\theta` (``tests/test_vi_modes.py``)."""
    import pyro
    import pyro.distributions as dist

    theta = pyro.sample("theta", dist.Normal(BIMODAL_M0, BIMODAL_S0))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(theta.abs(), 1.0), obs=y)


def _bimodal_build(scripts: Path):
    import torch

    return bimodal_model, {"y": torch.tensor(BIMODAL_Y, dtype=torch.float64)}


def _bimodal_truth(scripts: Path) -> Truth:
    """theta's mean and sd by a trapezoid rule on [-30, 30] (400,001 points, log space)."""
    y = np.asarray(BIMODAL_Y)
    t = np.linspace(-30.0, 30.0, 400_001)
    log_p = -0.5 * ((t - BIMODAL_M0) / BIMODAL_S0) ** 2
    log_p = log_p - 0.5 * ((y[None, :] - np.abs(t)[:, None]) ** 2).sum(1)
    w = np.exp(log_p - log_p.max())
    w /= np.trapezoid(w, t)
    mean = np.trapezoid(w * t, t)
    sd = math.sqrt(np.trapezoid(w * (t - mean) ** 2, t))
    return Truth({"theta": (float(mean), sd)}, "quadrature (400,001 points)")


# ----------------------------------------------------------------------------- the registry

POSTERIORS = (
    Posterior(
        "normal_mean",
        "auto-normal",
        _from_script("normal_mean"),
        _normal_mean_truth,
        "runs/normal_mean.py: conjugate normal mean; closed form",
    ),
    Posterior(
        "eight_schools_noncentered",
        "auto-normal",
        _from_script("eight_schools_noncentered"),
        _posteriordb_truth("eight_schools-eight_schools_noncentered"),
        "runs/eight_schools_noncentered.py; posteriordb reference draws",
    ),
    Posterior(
        "eight_schools_centered",
        "auto-normal",
        _from_script("eight_schools_centered"),
        _posteriordb_truth("eight_schools-eight_schools_centered"),
        "runs/eight_schools_centered.py (a funnel); posteriordb reference draws",
    ),
    Posterior(
        "kidiq_kidscore_momiq",
        "auto-mvn",
        _from_script("kidiq_kidscore_momiq"),
        _posteriordb_truth("kidiq-kidscore_momiq"),
        "runs/kidiq_kidscore_momiq.py (flat prior on beta); posteriordb reference draws",
        flat_prior=True,
    ),
    Posterior(
        "sblri_blr",
        "auto-mvn",
        _from_script("sblri_blr"),
        _posteriordb_truth("sblri-blr"),
        "runs/sblri_blr.py (posterior sds near 0.001); posteriordb reference draws",
    ),
    Posterior(
        "hierarchical_logistic",
        "auto-normal",
        _hierarchical_logistic(100),
        _nuts_truth("hierarchical_logistic_J100"),
        "runs/hierarchical_logistic.py, 100 groups; NumPyro NUTS reference (all sites)",
    ),
    Posterior(
        "hierarchical_logistic_J1000",
        "auto-normal",
        _hierarchical_logistic(1000),
        _nuts_truth("hierarchical_logistic_J1000"),
        "runs/hierarchical_logistic.py, 1,000 groups; NumPyro NUTS reference (mu, sigma, beta)",
    ),
    Posterior(
        "conjugate_gaussian",
        "auto-normal",
        _conjugate_gaussian_build,
        _conjugate_gaussian_truth,
        "tests/vi_helpers.py: three independent normal means; closed form",
    ),
    Posterior(
        "flat_regression",
        "auto-mvn",
        lambda scripts: (flat_regression_model, _flat_regression_data()),
        _flat_regression_truth,
        "tests/test_vi_guides.py: linear regression, flat prior, correlated; closed form",
        flat_prior=True,
    ),
    Posterior(
        "hierarchical_normal",
        "auto-normal",
        _hierarchical_normal_build,
        _hierarchical_normal_truth,
        "tests/test_vi_initialization.py: 30 groups, no MAP; quadrature over sigma",
    ),
    Posterior(
        "neals_funnel",
        "auto-normal",
        lambda scripts: (neals_funnel_model, {}),
        _funnel_truth,
        "Neal's funnel, y ~ N(0, 3), x ~ N(0, e^(y/2)); closed-form moments",
    ),
    Posterior(
        "bimodal",
        "auto-normal",
        _bimodal_build,
        _bimodal_truth,
        "tests/test_vi_modes.py: y ~ N(|theta|, 1), two modes; quadrature",
    ),
)

MODEL_SUITE = (  # runs/ scripts with a KIND: name, the guide the suite fits (GUIDE), about
    ("baseball_logit", "auto-normal", "Efron-Morris baseball, centred logit pooling (a funnel)"),
    ("baseball_pooled", "auto-normal", "Efron-Morris baseball, pooled through a Beta prior"),
    ("bayesian_regression_module", "auto-normal", "linear regression as a PyroModule[nn.Linear]"),
    ("bnn_module", "auto-normal", "a 1-4-1 tanh Bayesian neural network of PyroModule layers"),
    ("cjs_dipper", "auto-normal", "Cormack-Jolly-Seber dippers, alive states enumerated"),
    ("garch11", "auto-normal", "GARCH(1,1), beta1's upper bound is 1 - alpha1 (dynamic support)"),
    ("gmm_enum", "auto-normal", "two-component Gaussian mixture, assignments enumerated"),
    ("gp_regression", "auto-normal", "GP regression, kernel hyperparameters latent, torch.eye(N)"),
    ("hmm_enum", "auto-normal", "HMM of binary tones, hidden states enumerated (pyro.markov)"),
    ("lighthouses", "auto-normal", "Gull's lighthouses, Cauchy data (polynomial tails)"),
    ("neals_funnel", "auto-normal", "Neal's funnel in 10 dimensions, y and 9 x's"),
    ("lkj_mvn", "auto-mvn", "multivariate normal with an LKJ correlation prior"),
    ("logistic_regression", "auto-normal", "logistic regression, (X @ beta[..., None])[..., 0]"),
    ("negbin_glm", "auto-normal", "negative-binomial regression, coefficients share a scale"),
    ("poisson_lognormal", "auto-normal", "Poisson regression with a normal effect per count"),
    ("regression_default_dtype", "auto-normal", "regression casting its data to the default dtype"),
    ("robust_regression", "auto-normal", "Student-t regression as a scale mixture of normals"),
)

SUITE_NAMES = {"neals_funnel": "neals_funnel_9d"}  # a suite script whose name is taken above

POSTERIORS += tuple(
    Posterior(
        SUITE_NAMES.get(name, name),
        guide,
        _from_suite_script(name),
        _suite_truth(name),
        f"runs/{name}.py: {about}; NumPyro NUTS reference",
    )
    for name, guide, about in MODEL_SUITE
)

SCRIPTS = (  # the shipped model scripts the registry covers: every runs/*.py
    "normal_mean",
    "eight_schools_noncentered",
    "eight_schools_centered",
    "kidiq_kidscore_momiq",
    "sblri_blr",
    "hierarchical_logistic",
    *(name for name, _, _ in MODEL_SUITE),
)


def select(names: str | None, choices: tuple = POSTERIORS) -> tuple:
    """The entries of ``choices`` (anything with a ``name``; default the posteriors) named in a
    comma-separated list, a script's ``.py`` allowed (all of them for None or "")."""
    if not names:
        return choices
    known = {p.name: p for p in choices}
    wanted = [n.strip().removesuffix(".py") for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ValueError(f"--models must name some of {', '.join(known)}; got {names!r}")
    return tuple(known[n] for n in wanted)
