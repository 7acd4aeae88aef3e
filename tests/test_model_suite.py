"""The model suite in ``runs/``: real models with independent references (issue 16, item 7).

Every script of the suite (a ``runs/*.py`` that declares its ``KIND``) imports, makes its data,
and runs once under ``pyro.poutine.trace`` in float64 and float32 (the run's dtype also being
torch's default dtype, as a fit will set it). Its reference loads and names only sites of the
model, with their shapes, and the generator's record says the draws passed its checks. The
script's log density agrees, up to a constant, with that of its NumPyro twin in
``runs/references/make_references.py`` (on which NUTS made the reference) at random points
whose twin values the generator recorded; for the enumeration models that compares Pyro's
enumerated marginal with a hand-written one (log-sum-exp, forward algorithm, closed-form CJS
likelihood). Tests marked ``slow`` recompute the twin's values where NumPyro is installed.
"""

import contextlib
import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from ppl_models.vi.references import load_reference, match_sites
from ppl_models.vi.script import load_script, model_data
from ppl_models.vi.settings import GUIDE_CHOICES

RUNS = Path(__file__).resolve().parents[1] / "runs"
RECORD = RUNS / "references" / "suite.json"
KINDS = {
    "enumeration",
    "pyromodule",
    "default-dtype",
    "dynamic-support",
    "lkj",
    "funnel",
    "heavy-tails",
    "local-latents",
    "idiom",
    "glm",
}
SUITE = sorted(
    p.stem for p in RUNS.glob("*.py") if re.search(r"^KIND = ", p.read_text(), re.MULTILINE)
)


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def load(name, dtype=torch.float64):
    """The script, imported with ``dtype`` as torch's default: a ``PyroModule`` built at import
    (as Pyro's regression tutorial builds it) makes its priors' tensors then, so a run in
    ``dtype`` must import its script in that scope too."""
    with default_dtype(dtype):
        return load_script(RUNS / f"{name}.py")


def run_trace(script, dtype):
    data = model_data(script.model, script.load_data(), dtype=dtype)
    with default_dtype(dtype):
        trace = poutine.trace(script.model).get_trace(**data)
        trace.compute_log_prob()
    return trace, data


def is_enumerated(site) -> bool:
    return site["infer"].get("enumerate") == "parallel"


def test_the_suite_covers_every_kind():
    kinds = {load_script(RUNS / f"{name}.py").module.KIND for name in SUITE}
    assert len(SUITE) >= 12
    assert kinds == KINDS


@pytest.mark.parametrize("name", SUITE)
def test_script_declares_what_benchmarks_read(name):
    module = load_script(RUNS / f"{name}.py").module
    assert module.KIND in KINDS
    assert module.GUIDE in GUIDE_CHOICES
    assert hasattr(module, "REFERENCE") or hasattr(module, "TRUTH")
    doc = module.__doc__
    assert "Source" in doc and "Truth" in doc, "the docstring credits its source and its truth"
    if hasattr(module, "REFERENCE"):
        assert (RUNS / module.REFERENCE).is_file()
        assert module.REFERENCE == f"references/{name}.json.zip"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", SUITE)
def test_script_runs_under_trace(name, dtype):
    script = load(name, dtype)
    trace, _ = run_trace(script, dtype)
    latent = {
        k: s for k, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
    }
    assert latent
    for site_name, site in latent.items():
        value = site["value"]
        if not is_enumerated(site) and value.is_floating_point():
            assert value.dtype == dtype, site_name
    assert not math.isnan(float(trace.log_prob_sum()))


def site_shapes(trace) -> dict[str, tuple[int, ...]]:
    """Latent (continuous) and deterministic sites, as the fit's diagnosis sees them."""
    shapes = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or is_enumerated(site):
            continue
        deterministic = site["infer"].get("_deterministic", False)
        if (not site["is_observed"] or deterministic) and name not in shapes:
            shapes[name] = tuple(site["value"].shape)
    return shapes


@pytest.mark.parametrize("name", SUITE)
def test_reference_names_sites_of_the_model(name):
    script = load(name)
    module = script.module
    if not hasattr(module, "REFERENCE"):
        pytest.skip("closed form only")
    reference = load_reference(RUNS / module.REFERENCE)
    trace, _ = run_trace(script, torch.float64)
    matched = match_sites(reference, site_shapes(trace))  # raises on a stranger or bad shape
    assert reference.chains == 4 and reference.draws_per_chain >= 1000
    for values in matched.draws.values():
        assert np.isfinite(values).all()
    record = json.loads(RECORD.read_text())[name]
    assert record["file"] == module.REFERENCE
    assert record["divergences"] == 0
    assert record["max_r_hat"] <= 1.01 and record["min_ess_bulk"] >= 400


def test_funnel_reference_agrees_with_its_closed_form():
    module = load_script(RUNS / "neals_funnel.py").module
    draws = load_reference(RUNS / module.REFERENCE).draws
    y = draws["y"].ravel()
    assert abs(y.mean() - module.TRUTH["y"]["mean"]) < 4 * 3.0 / math.sqrt(y.size)
    assert abs(y.std() / module.TRUTH["y"]["sd"] - 1) < 0.05
    x = draws["x"].ravel()  # heavy tails: only the median and quartiles are checked tightly
    assert abs(np.median(x)) < 0.1


def test_lighthouses_density_and_reference_agree_with_the_model_and_quadrature():
    """``log_posterior`` (scipy.stats) is the script's Pyro density up to a constant, and the
    exact reference draws have the quadrature's means (within 4 Monte Carlo errors) and sds
    (within 8%: the draws' own sd error is up to 2.5%, under polynomial tails)."""
    script = load("lighthouses")
    module = script.module
    x = torch.tensor(module.data()["x"], dtype=torch.float64)
    rng = np.random.default_rng(0)
    differences = []
    for _ in range(3):
        alpha = rng.normal(0.0, 3.0, size=x.shape[-1])
        conditioned = poutine.condition(script.model, data={"alpha": torch.tensor(alpha)})
        pyro_log_p = float(poutine.trace(conditioned).get_trace(x=x).log_prob_sum())
        scipy_log_p = sum(module.log_posterior(a, x[:, j].numpy()) for j, a in enumerate(alpha))
        differences.append(pyro_log_p - scipy_log_p)
    np.testing.assert_allclose(differences, differences[0], atol=1e-9)
    draws = load_reference(RUNS / module.REFERENCE).draws["alpha"].reshape(-1, x.shape[-1])
    for j, (mean, sd) in enumerate(module.posterior_moments().values()):
        assert abs(draws[:, j].mean() - mean) < 4 * sd / math.sqrt(len(draws)), j
        assert abs(draws[:, j].std() / sd - 1) < 0.08, j


def test_total_reference_size_stays_small():
    total = sum((RUNS / "references" / f"{n}.json.zip").stat().st_size for n in SUITE)
    assert total < 15e6


# --------------------------------------------------------------------------- twins


def script_log_density(script, data, values) -> float:
    """log p(data, values) of the script, its enumerated sites summed out by Pyro."""
    conditioned = poutine.condition(script.model, data=values)
    trace = poutine.trace(conditioned).get_trace(**data)
    if any(is_enumerated(s) for s in trace.nodes.values() if s["type"] == "sample"):
        elbo = TraceEnum_ELBO(max_plate_nesting=3)
        return -float(elbo.loss(conditioned, lambda **kwargs: None, **data))
    return float(trace.log_prob_sum())


@pytest.mark.parametrize("name", SUITE)
def test_script_agrees_with_its_twin(name):
    """The script's log density equals, up to a constant, that of the NumPyro twin on which
    NUTS made the reference, at the three random points the generator recorded with the twin's
    values (uniform in (-2, 2) in the unconstrained space). For the enumeration models this
    compares Pyro's enumerated marginal with a hand-written one."""
    check = json.loads(RECORD.read_text())[name]["twin_check"]
    script = load(name)
    with default_dtype(torch.float64):
        data = model_data(script.model, script.load_data(), dtype=torch.float64)
        script_lp = [
            script_log_density(
                script, data, {k: torch.tensor(v, dtype=torch.float64) for k, v in p.items()}
            )
            for p in check["points"]
        ]
    twin_lp = check["log_density"]
    assert np.isfinite(twin_lp).all() and np.isfinite(script_lp).all()
    scale = 1e-6 * max(map(abs, twin_lp))
    np.testing.assert_allclose(np.diff(script_lp), np.diff(twin_lp), rtol=1e-6, atol=scale)


@pytest.fixture(scope="module")
def generator():
    pytest.importorskip("numpyro")
    import numpyro

    numpyro.enable_x64()
    path = RUNS / "references" / "make_references.py"
    spec = importlib.util.spec_from_file_location("_make_references", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks the module up while it is made
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", SUITE)
def test_recorded_twin_values_are_current(name, generator):
    """The twin values in ``suite.json`` are those of today's twin (NumPyro; a few seconds per
    model, compiling JAX's operations): rerun ``make_references.py --twin-check-only`` after
    editing a twin."""
    check = json.loads(RECORD.read_text())[name]["twin_check"]
    script = load(name)
    jdata = generator.jax_data(script.module.data())

    def twin():
        generator.SUITE[name].twin(jdata, script.module)

    now = [generator.twin_log_density(twin, p) for p in check["points"]]
    np.testing.assert_allclose(now, check["log_density"], rtol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SUITE if n in ("garch11", "baseball_logit")])
def test_reparametrized_sampler_has_the_same_prior(name, generator):
    """Where NUTS ran a reparametrized twin, its prior draws of the script's sites follow the
    twin's prior (their likelihoods are the same function of those sites): same means and sds
    within Monte Carlo error (10,000 draws; medians of absolute values under Cauchy tails)."""
    import jax
    from numpyro.infer import Predictive

    script = load(name)
    spec = generator.SUITE[name]
    jdata = generator.jax_data(script.module.data())

    def draws(model):
        predictive = Predictive(lambda: model(jdata, script.module), num_samples=10000)
        return predictive(jax.random.PRNGKey(1))

    a, b = draws(spec.twin), draws(spec.sampler)
    for site in spec.keep:
        x, y = np.asarray(a[site]), np.asarray(b[site])
        if name == "baseball_logit" and site in ("scale", "alpha"):
            x, y = np.median(np.abs(x), 0), np.median(np.abs(y), 0)
            np.testing.assert_allclose(x, y, rtol=0.1)
            continue
        np.testing.assert_allclose(x.mean(0), y.mean(0), atol=0.05 * x.std(0).max())
        np.testing.assert_allclose(x.std(0), y.std(0), rtol=0.05)
