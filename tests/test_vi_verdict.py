"""The verdict: never trustworthy while a parameter is off, and k-hat is not enough."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from vi_helpers import FakeFit, gaussian_problem, normal_guide

from ppl_models.importance import d2_bound
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.references import Reference
from ppl_models.vi.script import posteriordb_dir
from ppl_models.vi.verdict import MEANS_ONLY, NOT_TRUSTWORTHY, TRUSTWORTHY, VerdictRules, decide

SHARED = posteriordb_dir()
DRAWS = 20_000


def _exact_reference(mean, sd, chains=4, draws=2500, seed=0):
    rng = np.random.default_rng(seed)
    values = rng.normal(mean.numpy(), sd, size=(chains, draws, len(mean)))
    return Reference({"mu": values}, "exact posterior draws (test)")


@pytest.fixture(scope="module")
def problem():
    return gaussian_problem(d=3, n=5)


def _diagnose(problem, shift=0.0, scale=1.0, reference=None, converged=True, seed=0):
    model, data, m, s = problem
    guide = normal_guide(m + shift * s, torch.full_like(m, scale * s))
    fit = FakeFit(model, guide, data, max_plate_nesting=2, converged=converged)
    return diagnose(fit, reference, draws=DRAWS, progress=False, seed=seed).summary


def test_a_fit_equal_to_the_posterior_is_trustworthy(problem):
    _, _, m, s = problem
    assert _diagnose(problem)["verdict"] == TRUSTWORTHY
    with_ref = _diagnose(problem, reference=_exact_reference(m, s))
    assert with_ref["verdict"] == TRUSTWORTHY
    assert all(abs(p["std_mean_error"]) < 0.05 for p in with_ref["parameters"])


@pytest.mark.parametrize("shift", [0.25, 0.5])
def test_shifted_mean_with_the_right_spread_is_caught_while_khat_stays_low(problem, shift):
    _, _, m, s = problem
    alone = _diagnose(problem, shift=shift)
    assert alone["psis_khat"] < 0.5  # k-hat alone would reassure
    assert alone["d2"] == pytest.approx(2 * 3 * shift**2, rel=0.15)  # d_2 = 2 d delta^2
    assert alone["verdict"] == NOT_TRUSTWORTHY
    assert any("Importance sampling moves the means" in r for r in alone["verdict_reasons"])
    with_ref = _diagnose(problem, shift=shift, reference=_exact_reference(m, s))
    assert with_ref["verdict"] == NOT_TRUSTWORTHY
    assert set(with_ref["verdict_off"]) >= {"mu[1]", "mu[2]", "mu[3]"}
    assert "mu[1]" in " ".join(with_ref["verdict_reasons"])


def test_wrong_spread_with_right_means_is_means_only_with_a_reference(problem):
    _, _, m, s = problem
    wide = _diagnose(problem, scale=1.3, reference=_exact_reference(m, s))
    assert wide["verdict"] == MEANS_ONLY
    assert "sd ratio" in " ".join(wide["verdict_reasons"])
    narrow = _diagnose(problem, scale=0.75, reference=_exact_reference(m, s))
    assert narrow["verdict"] == MEANS_ONLY


def test_an_error_above_the_tolerance_is_never_certified_by_the_monte_carlo_allowance(problem):
    # exact error 0.11 sd in every mean (closed form): within 0.1 + 2 MCSE of a long reference,
    # so the allowance once certified it as trustworthy in most seeds
    _, _, m, s = problem
    ref = _exact_reference(m, s, draws=25_000)
    for seed in range(3):
        summary = _diagnose(problem, shift=0.11, reference=ref, seed=seed)
        assert summary["verdict"] != TRUSTWORTHY
        assert any("within the Monte Carlo error" in r for r in summary["verdict_reasons"]) or (
            summary["verdict"] == NOT_TRUSTWORTHY
        )
    # the same comparison certifies an exact fit (measured errors far below 0.1 sd)
    assert _diagnose(problem, reference=ref)["verdict"] == TRUSTWORTHY


def test_a_constant_reference_certifies_nothing():
    row = _row("a", 0.0)
    row.update(ref_sd=0.0, ref_mcse_mean=0.0, ref_mcse_sd=0.0, std_mean_error=None, sd_ratio=None)
    v = _decide([row])
    assert v.label == NOT_TRUSTWORTHY and v.off == ["a"]
    assert "constant or not finite" in v.reasons[0]
    point = dict(row, sd=0.0, mcse_mean=0.0, mcse_sd=0.0)  # q agrees: a constant quantity
    assert _decide([point]).label == TRUSTWORTHY


def test_a_nan_never_passes_a_check():
    coords = [{"name": "a", "site": "a", "sd": 1.0, "mean_error": 0.01, "sd_error": 0.05}]
    row = _row("a", 0.0)
    for key in ("ref_mean", "ref_sd", "std_mean_error", "sd_ratio", "ks"):
        row[key] = None
    alone = dict(has_reference=False, coordinates=coords)
    assert _decide([row], **alone).label == TRUSTWORTHY
    assert _decide([row], **alone, importance_ess=math.nan).label == NOT_TRUSTWORTHY
    assert _decide([row], **alone, khat=math.nan).label == NOT_TRUSTWORTHY
    assert d2_bound(np.array([0.0, 1.0, math.nan])) == math.inf  # bounds nothing, never 0
    assert _decide([dict(row, psis_mean=math.nan)], **alone).label != TRUSTWORTHY
    assert _decide([dict(row, psis_sd=math.nan)], **alone).label != TRUSTWORTHY
    assert _decide([dict(row, psis_mcse_mean=math.nan)], **alone).label != TRUSTWORTHY
    compared = _row("a", math.nan)
    assert _decide([compared]).label == NOT_TRUSTWORTHY
    assert _decide([_row("a", 0.0, ratio=math.nan)]).label != TRUSTWORTHY
    assert _decide([_row("a", 0.0, ks=math.nan)]).label != TRUSTWORTHY


def test_not_converged_is_never_trustworthy(problem):
    _, _, m, s = problem
    assert _diagnose(problem, converged=False)["verdict"] == NOT_TRUSTWORTHY
    ref = _diagnose(problem, converged=False, reference=_exact_reference(m, s))
    assert ref["verdict"] != TRUSTWORTHY
    assert "convergence rule" in ref["verdict_reasons"][0]


def _row(name, err, ratio=1.0, ref_mcse=0.01, ks=0.01, ess=10_000.0):
    return {
        "name": name,
        "site": name,
        "kind": "latent",
        "mean": err,
        "sd": ratio,
        "mcse_mean": ratio / math.sqrt(DRAWS),
        "mcse_sd": ratio / math.sqrt(2 * DRAWS),
        "ref_mean": 0.0,
        "ref_sd": 1.0,
        "ref_mcse_mean": ref_mcse,
        "ref_mcse_sd": ref_mcse / math.sqrt(2),
        "ref_ess": ess,
        "std_mean_error": err,
        "sd_ratio": ratio,
        "ks": ks,
        "psis_mean": err,
        "psis_sd": ratio,
    }


def _decide(rows, **kw):
    args = dict(
        converged=True,
        khat=0.2,
        khat_threshold=0.7,
        d2=0.001,
        importance_ess=10_000.0,
        draws=DRAWS,
        coordinates=[],
        has_reference=True,
    )
    args.update(kw)
    return decide(rows, **args)


def test_reference_tolerance_allows_for_the_references_monte_carlo_error():
    # a short NUTS run: MCSE 0.06 sd, so 0.2 sd of apparent error can be noise ...
    assert _decide([_row("a", 0.2, ref_mcse=0.06, ess=300)]).label == TRUSTWORTHY
    # ... but not 0.5 sd, and a long run allows no more than about 0.12 sd
    assert _decide([_row("a", 0.5, ref_mcse=0.06, ess=300)]).label == NOT_TRUSTWORTHY
    assert _decide([_row("a", 0.15, ref_mcse=0.01)]).label == NOT_TRUSTWORTHY
    v = _decide([_row("a", 0.02), _row("b", -0.4), _row("c", 0.01, ratio=0.6)])
    assert v.label == NOT_TRUSTWORTHY and v.off[:2] == ["b", "c"] and "b" in v.reasons[0]
    assert _decide([_row("a", 0.02, ratio=1.25)]).label == MEANS_ONLY
    assert _decide([_row("a", 0.02, ks=0.2)]).label == MEANS_ONLY
    assert _decide([_row("a", 0.02)], khat=0.9).label == MEANS_ONLY
    assert _decide([_row("a", 0.02)], converged=False).label == MEANS_ONLY


def test_a_reference_too_short_to_resolve_the_tolerance_cannot_certify():
    # MCSE 0.08 sd: the reference alone would accept up to 0.1 + 2 x 0.08 sd of error
    # q's own diagnostics certify it (PSIS agrees with q) unless PSIS is unreliable (k-hat
    # above its threshold) or finds q's moments unsettled
    row = _row("a", 0.2, ref_mcse=0.08, ess=150)
    certified = [{"name": "a", "site": "a", "sd": 1.0, "mean_error": 0.01, "sd_error": 0.05}]
    assert _decide([row], coordinates=certified).label == TRUSTWORTHY  # q certifies itself
    unsettled = dict(row, psis_mean=0.35, psis_mcse_mean=0.1)  # within 0.1 + 2 MCSE, not 0.1
    v = _decide([unsettled], coordinates=certified)
    assert v.label == MEANS_ONLY and "cannot resolve" in " ".join(v.reasons)
    assert _decide([row], coordinates=certified, khat=0.75).label == MEANS_ONLY
    moved = dict(row, psis_mean=0.6)  # importance sampling measures the mean off
    assert _decide([moved], coordinates=certified).label == NOT_TRUSTWORTHY
    # a long reference settles the same error on its own
    assert _decide([_row("a", 0.2, ref_mcse=0.01)], coordinates=certified).label == NOT_TRUSTWORTHY


def test_a_reference_whose_chains_disagree_cannot_certify():
    certified = [{"name": "a", "site": "a", "sd": 1.0, "mean_error": 0.01, "sd_error": 0.05}]
    agreeing = dict(_row("a", 0.02), ref_r_hat=1.002)
    assert _decide([agreeing], coordinates=certified, khat=0.75).label == MEANS_ONLY  # the cap
    assert _decide([agreeing], coordinates=certified).label == TRUSTWORTHY
    stuck = dict(agreeing, ref_r_hat=1.08)  # chains in different places: its MCSE means nothing
    unsettled = dict(stuck, psis_mean=0.2, psis_mcse_mean=0.1)  # and q cannot settle it itself
    v = _decide([unsettled], coordinates=certified)
    assert v.label == MEANS_ONLY and "R-hat above 1.01" in " ".join(v.reasons)
    assert _decide([stuck], coordinates=certified).label == TRUSTWORTHY  # q certifies itself


def test_an_element_off_a_reference_whose_chains_disagree_stays_off_and_says_why():
    """A reference chain stuck in a negligible mode makes q look off: the verdict keeps the
    finding (the modes may be real) and says that the reference's chains disagree there."""
    stuck = dict(_row("a", 0.02, ratio=0.1), ref_r_hat=1.83)
    v = _decide([stuck, dict(_row("b", 0.01), ref_r_hat=1.001)])
    assert v.label == MEANS_ONLY and v.off == ["a"]
    assert "The reference's own chains disagree for a (split R-hat up to 1.83" in " ".join(
        v.reasons
    )
    mixed = dict(stuck, ref_r_hat=1.002)  # the same error from converged chains: no such words
    assert "chains disagree" not in " ".join(_decide([mixed]).reasons)


def test_never_trustworthy_while_any_element_is_outside_its_band():
    rules = VerdictRules()
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = rng.integers(1, 8)
        errs = rng.normal(0, 0.15, size=k)
        ratios = np.exp(rng.normal(0, 0.1, size=k))
        mcses = rng.uniform(0.005, 0.08, size=k)
        rows = [
            _row(f"p{i}", e, r, m)
            for i, (e, r, m) in enumerate(zip(errs, ratios, mcses, strict=True))
        ]
        v = _decide(rows)
        far = [
            abs(e) > rules.mean_tolerance + 2 * math.hypot(m, r / math.sqrt(DRAWS)) + 1e-12
            for e, r, m in zip(errs, ratios, mcses, strict=True)
        ]
        if any(far):
            assert v.label == NOT_TRUSTWORTHY
        if v.label == TRUSTWORTHY:
            assert np.all(np.abs(errs) <= 0.1 + 2 * 0.081) and np.all(np.abs(ratios - 1) < 0.3)


def test_without_reference_a_high_khat_or_few_effective_draws_is_not_trustworthy():
    coords = [{"name": "a", "site": "a", "sd": 1.0, "mean_error": 0.01, "sd_error": 0.05}]
    row = _row("a", 0.0)
    for key in ("ref_mean", "ref_sd", "std_mean_error", "sd_ratio", "ks"):
        row[key] = None
    base = dict(has_reference=False, coordinates=coords)
    assert _decide([row], **base).label == TRUSTWORTHY
    # PSIS is reliable up to k-hat's sample-size threshold (0.7 here), not only below 0.5
    assert _decide([row], **base, khat=0.6).label == TRUSTWORTHY
    assert _decide([row], **base, khat=0.75).label == NOT_TRUSTWORTHY
    assert _decide([row], **base, importance_ess=50.0).label == NOT_TRUSTWORTHY
    # VIABEL's worst-case bounds are reported, not required: loose ones condemn nothing ...
    loose = [dict(coords[0], mean_error=0.9, sd_error=0.9)]
    assert _decide([row], has_reference=False, coordinates=loose).label == TRUSTWORTHY
    # ... while an sd that importance sampling measures off does
    wide = dict(row, sd=1.3)
    assert _decide([wide], has_reference=False, coordinates=loose).label == MEANS_ONLY


# ------------------------------------------------------------------ validation on posteriordb


def _shared_fit(script: str, guide: str):
    from ppl_models.vi.fitting import fit_svi
    from ppl_models.vi.script import load_script

    ms = load_script(Path(__file__).resolve().parents[1] / "runs" / script)
    return fit_svi(ms.model, guide, ms.load_data(), device="cpu", seed=0)


needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"posteriordb data not found under {SHARED}"
)


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize(
    "script, posterior",
    [("kidiq_kidscore_momiq.py", "kidiq-kidscore_momiq"), ("sblri_blr.py", "sblri-blr")],
)
def test_full_rank_fits_match_posteriordb(script, posterior):
    fit = _shared_fit(script, "auto-mvn")
    ref = SHARED / posterior / "reference_draws.json.zip"
    # the default S: with 20,000 draws the k-hat of kidiq's nearly equal weights (sd of log w
    # 0.08) scatters between 0.66 and 0.81; with 100,000 between 0.2 and 0.3
    summary = diagnose(fit, ref, progress=False).summary
    for p in summary["parameters"]:
        assert abs(p["std_mean_error"]) <= 0.1, p
        assert 0.9 <= p["sd_ratio"] <= 1.1, p
    assert summary["verdict"] == TRUSTWORTHY


@needs_shared
@pytest.mark.slow
def test_centred_eight_schools_mean_field_is_not_trustworthy():
    fit = _shared_fit("eight_schools_centered.py", "auto-normal")
    ref = SHARED / "eight_schools-eight_schools_centered" / "reference_draws.json.zip"
    with_ref = diagnose(fit, ref, draws=DRAWS, progress=False).summary
    alone = diagnose(fit, None, draws=DRAWS, progress=False).summary
    assert with_ref["verdict"] != TRUSTWORTHY and alone["verdict"] != TRUSTWORTHY
    assert "tau" in with_ref["verdict_off"]


def test_sites_the_reference_lacks_are_checked_by_importance_sampling():
    ok = _row("theta", 0.01)
    raw = _row("raw", 0.0)
    for key in ("ref_mean", "ref_sd", "std_mean_error", "sd_ratio", "ks"):
        raw[key] = None
    coords = [{"name": "raw", "site": "raw", "sd": 1.0, "mean_error": 2.0, "sd_error": 3.0}]
    v = _decide([ok, raw], coordinates=coords)
    assert v.label == TRUSTWORTHY and any("certify them" in r for r in v.reasons)
    unsettled = dict(raw, psis_mean=0.15, psis_mcse_mean=0.05)  # within its MC error only
    v = _decide([ok, unsettled], coordinates=coords)
    assert v.label == TRUSTWORTHY  # uncertified, not contradicted: said, not condemned
    assert any("raw" in r and "neither compared nor certified" in r for r in v.reasons)
    moved = dict(raw, psis_mean=0.5, psis_mcse_mean=0.01)
    v = _decide([ok, moved], coordinates=coords)
    assert v.label == NOT_TRUSTWORTHY and "raw" in v.off


def test_without_reference_right_means_with_loose_bounds_are_means_only(problem):
    wide = _diagnose(problem, scale=1.3)
    assert wide["psis_khat"] < 0.5
    assert wide["verdict"] == MEANS_ONLY
    assert set(wide["verdict_off"]) == {"mu[1]", "mu[2]", "mu[3]"}  # the sds, measured off
