"""The first screen's advice: the sentence on why and the next steps, from the verdict's
findings (kinds and facts) and the model's structure, never from the sentences' words."""

from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_models.vi import advice
from ppl_models.vi.script import load_script, model_data
from ppl_models.vi.verdict import MEANS_ONLY, NOT_TRUSTWORTHY, TRUSTWORTHY, Finding

RUNS = Path(__file__).resolve().parents[1] / "runs"
KHAT = Finding("khat_cap", MEANS_ONLY, (), {"khat": 0.87, "threshold": 0.7})
SDS = Finding(
    "reference_sds",
    MEANS_ONLY,
    ("tau", "theta[1]"),
    {"names": ["tau", "theta[1]"], "details": [("tau", 0.31, 0.13), ("theta[1]", 0.6, 0.12)]},
)
MEANS = Finding(
    "reference_means",
    NOT_TRUSTWORTHY,
    ("mu",),
    {"names": ["mu"], "details": [("mu", -0.73, 0.12)]},
)
FUNNEL = {"scale_parents": {"theta": ["tau"]}, "loc_parents": {"theta": ["mu"]}}


def _summary(**changes) -> dict:
    summary = {
        "verdict": NOT_TRUSTWORTHY,
        "guide": "auto-normal",
        "reference": "posteriordb draws",
        "model_structure": FUNNEL,
        "fit_start": {"method": "prior", "collapsed": []},
        "draws": 1000,
        "fit_settings": {"steps": 1000},
    }
    return summary | changes


@pytest.mark.parametrize(
    ("script", "scales", "locations"),
    [
        ("eight_schools_centered.py", {"theta": ["tau"]}, {"theta": ["mu"]}),
        ("eight_schools_noncentered.py", {}, {}),
        ("hierarchical_logistic.py", {"alpha": ["sigma"]}, {"alpha": ["mu"]}),
    ],
)
def test_model_structure_finds_which_site_scales_which(script, scales, locations):
    loaded = load_script(RUNS / script)
    data = model_data(loaded.model, loaded.load_data())
    before = torch.get_rng_state()
    structure = advice.model_structure(loaded.model, data)
    assert structure == {"scale_parents": scales, "loc_parents": locations}
    assert torch.equal(torch.get_rng_state(), before)  # the caller's random state is kept


def test_model_structure_of_a_flat_prior_reads_values_from_the_guide():
    def model(y):
        beta = pyro.sample("beta", dist.ImproperUniform(dist.constraints.real, (), (2,)))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(beta.sum(-1), sigma), obs=y)

    def guide(y):
        pyro.sample("beta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("sigma", dist.LogNormal(0.0, 0.1))

    y = torch.tensor([0.5, 1.0])
    with pytest.raises(NotImplementedError):  # a flat prior cannot be drawn from
        advice.model_structure(model, {"y": y})
    assert advice.model_structure(model, {"y": y}, guide) == {
        "scale_parents": {},
        "loc_parents": {},
    }


def test_a_funnel_gets_non_centring_and_a_richer_guide_first():
    findings = [KHAT, MEANS, SDS]
    steps = advice.next_steps(findings, _summary())
    assert steps[0].startswith("Non-centre `theta` (a funnel between `tau` and `theta`)")
    assert "`theta = mu + tau * theta_raw`" in steps[0]
    assert any("`--guide auto-mvn`" in s for s in steps)
    assert not any("--reference" in s for s in steps)  # there is one
    why = advice.headline(findings, _summary())
    assert "`mu`" in why and "-0.73 sd" in why and "0.87" in why


def test_no_funnel_advice_without_the_structure_or_for_a_trustworthy_fit():
    findings = [KHAT, SDS]
    assert not any(
        "Non-centre" in s for s in advice.next_steps(findings, _summary(model_structure=None))
    )
    agrees = [Finding("reference_agrees", TRUSTWORTHY, (), {"count": 10, "worst_mean": None})]
    steps = advice.next_steps(agrees, _summary(verdict=TRUSTWORTHY))
    assert steps == ["Nothing to fix: use q's means, sds and intervals as the posterior's."]


def test_each_finding_kind_leads_to_its_step():
    no_reference = advice.next_steps(
        [Finding("self_khat", NOT_TRUSTWORTHY, (), {"khat": 0.9, "limit": 0.5})],
        _summary(reference=None, model_structure=None, guide="auto-mvn"),
    )
    assert any("`--guide auto-iaf`" in s for s in no_reference)
    assert any("`--reference nuts`" in s for s in no_reference)
    modes = {"starts": 8, "missed": [{"share": 0.4}], "share": 0.4, "mean_off": ["mu"]}
    missed = advice.next_steps(
        [Finding("missed_modes", NOT_TRUSTWORTHY, ("mu",), modes)], _summary(model_structure=None)
    )
    assert any("several modes" in s for s in missed)
    stalled = advice.next_steps(
        [Finding("not_converged", MEANS_ONLY)], _summary(model_structure=None, verdict=MEANS_ONLY)
    )
    assert any("`--steps 2000`" in s for s in stalled)
    short = Finding("reference_unresolved", facts={"names": ["tau"], "mean_tolerance": 0.1})
    assert any("nuts_draws" in s for s in advice.next_steps([short], _summary()))
    assert any("--auto`" in s for s in advice.next_steps([KHAT, SDS], _summary()))
    climbed = _summary(ladder={"rungs": [], "stopped": "exhausted", "advice": []})
    assert not any("--auto`" in s for s in advice.next_steps([KHAT, SDS], climbed))


def test_model_structure_leaves_pyros_parameter_store_alone():
    from ppl_models.vi.fitting import fit_svi

    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("n", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    fit = fit_svi(model, "auto-normal", {"x": [0.5, 1.5, 1.0]}, steps=5)
    pyro.clear_param_store()
    advice.model_structure(fit.model, fit.data, fit.guide)
    assert list(pyro.get_param_store().keys()) == []  # the guide's loc and scale stay in it
