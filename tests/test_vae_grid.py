"""Exact grid posteriors of latent-2 VAEs and the inference gap's parts, against independent truths.

- A linear-Gaussian decoder (x = W z + b + noise) has a Gaussian posterior and evidence in closed
  form: the grid, the best Gaussians, the ELBOs and the KLs are checked against them.
- On a small VAE trained on synthetic digits: ELBO(amortized) <= ELBO(best) <= IW bound at
  K = 5000 <= grid log p(x), each up to its Monte Carlo error, and log p(x) does not move when the
  grid is refined.
- ``ppl-models vae`` with latent dimension 2 writes the section: summary keys, arrays, draws,
  figures and report, and rebuilds it.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from ppl_models import cli, diagnostics, importance
from ppl_models.jobs.vae.config import GRID_COMPARISON
from ppl_models.runs import read_json
from ppl_models.vae import evaluate, gaps, posterior_grid
from ppl_models.vae.best_gaussian import fit_best_gaussians, standardized_normal
from ppl_models.vae.model import VaeGuide, VaeModel

NOISE = 0.3


class AffineEncoder(nn.Module):
    """loc = (x - b) A + c, a constant log-scale: a stand-in encoder with a known output."""

    def __init__(self, a, b, c, log_scale):
        super().__init__()
        for name, value in (("a", a), ("b", b), ("c", c), ("s", log_scale)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float64))

    def forward(self, x):
        loc = (x.flatten(1) - self.b) @ self.a + self.c
        return loc, self.s.expand_as(loc)


def linear_gaussian_vae(w, n_images=4, seed=0):
    """The VAE p(z) = N(0, I), x | z = N(W z + b, NOISE^2 I) in float64, images drawn from it,
    their exact posteriors and evidence, and an encoder whose q is deliberately a little off."""
    rng = np.random.default_rng(seed)
    dim = len(w)
    b = rng.normal(size=dim)
    decoder = nn.Linear(2, dim).double()
    with torch.no_grad():
        decoder.weight.copy_(torch.as_tensor(w))
        decoder.bias.copy_(torch.as_tensor(b))
    model = VaeModel(decoder, 2, "normal-learned-scale").double()
    with torch.no_grad():
        model.log_scale.fill_(math.log(NOISE))
    z = rng.normal(size=(n_images, 2))
    x = z @ w.T + b + NOISE * rng.normal(size=(n_images, dim))
    cov = np.linalg.inv(np.eye(2) + w.T @ w / NOISE**2)
    mean = (x - b) @ w @ cov / NOISE**2
    marginal = stats.multivariate_normal(b, w @ w.T + NOISE**2 * np.eye(dim))
    log_evidence = np.array([marginal.logpdf(xi) for xi in x])
    sd = np.sqrt(np.diag(cov))
    encoder = AffineEncoder(w @ cov / NOISE**2, b, 0.3 * sd, np.log(1.5 * sd))
    return model, VaeGuide(encoder), torch.as_tensor(x), mean, cov, log_evidence


def gaussian_kl(m_q, s_q, m_p, s_p):
    """KL(N(m_q, s_q) || N(m_p, s_p)) in closed form."""
    inv = np.linalg.inv(s_p)
    d = m_p - m_q
    return 0.5 * (
        np.trace(inv @ s_q) + d @ inv @ d - len(d) + np.log(np.linalg.det(s_p) / np.linalg.det(s_q))
    )


def correlated_w(dim=6):
    return np.random.default_rng(5).normal(size=(dim, 2)) * np.array([1.0, 0.4])


def orthogonal_w(dim=6):
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(dim, 2)))
    return q * np.array([1.2, 0.5])  # orthogonal columns: the exact posterior is diagonal


# ----------------------------------------------------------------------------- closed forms


def test_grid_of_a_linear_gaussian_vae_is_the_exact_posterior():
    model, guide, x, mean, cov, log_evidence = linear_gaussian_vae(correlated_w())
    grids = posterior_grid.grid_posteriors(model, guide, x, n_points=401, chunk=20000)
    sd = np.sqrt(np.diag(cov))
    assert abs(cov[0, 1]) / sd.prod() > 0.2  # a correlated posterior
    for g, m, le in zip(grids, mean, log_evidence, strict=True):
        assert g.log_normalizer == pytest.approx(le, abs=1e-6)
        np.testing.assert_allclose(g.mean, m, atol=1e-6 * sd.min())
        np.testing.assert_allclose(g.cov, cov, atol=1e-6 * sd.prod())
    # refined: the same log p(x)
    finer = posterior_grid.grid_posteriors(model, guide, x, n_points=801, chunk=20000)
    for a, b in zip(grids, finer, strict=True):
        assert b.log_normalizer == pytest.approx(a.log_normalizer, abs=1e-9)


def test_best_gaussians_of_a_linear_gaussian_vae_are_the_exact_optima():
    model, guide, x, mean, cov, _ = linear_gaussian_vae(correlated_w())
    loc, scale = (torch.as_tensor(a) for a in evaluate.latent_moments(guide, x))
    # the default schedule (300 steps) converges to about 1e-4 of the posterior's scales
    full = fit_best_gaussians(model, x, loc, scale, family="full")
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_allclose(full.loc.numpy(), mean, atol=1e-3 * sd.min())
    np.testing.assert_allclose(full.cov, np.broadcast_to(cov, full.cov.shape), rtol=1e-3)
    # the diagonal Gaussian minimising KL(q || N(m, S)) has mean m and variances 1 / (S^-1)_ii
    diagonal = fit_best_gaussians(model, x, loc, scale, family="diagonal")
    precision = np.linalg.inv(cov)
    np.testing.assert_allclose(diagonal.loc.numpy(), mean, atol=1e-3 * sd.min())
    best = np.diag(1 / np.diag(precision))
    np.testing.assert_allclose(diagonal.cov, np.broadcast_to(best, (4, 2, 2)), rtol=1e-3)

    # with orthogonal columns of W the posterior is diagonal, and so is its best Gaussian
    model, guide, x, mean, cov, _ = linear_gaussian_vae(orthogonal_w())
    assert abs(cov[0, 1]) < 1e-12
    loc, scale = (torch.as_tensor(a) for a in evaluate.latent_moments(guide, x))
    diagonal = fit_best_gaussians(model, x, loc, scale, family="diagonal")
    np.testing.assert_allclose(diagonal.loc.numpy(), mean, atol=1e-3 * np.sqrt(np.diag(cov)).min())
    np.testing.assert_allclose(diagonal.cov, np.broadcast_to(cov, (4, 2, 2)), rtol=1e-3, atol=1e-12)


def test_gaps_of_a_linear_gaussian_vae_match_closed_form_kls():
    model, guide, x, mean, cov, log_evidence = linear_gaussian_vae(correlated_w())
    c, samples = gaps.compare(
        model, guide, x, ks=[1, 10, 100, 1000], grid_points=201, best_steps=300
    )
    np.testing.assert_allclose(c.log_evidence, log_evidence, atol=1e-6)
    q_cov = np.diag(np.exp(2 * guide.encoder.s.numpy()))
    precision = np.linalg.inv(cov)
    best_diag = np.diag(1 / np.diag(precision))
    for i in range(len(x)):
        kl_q = gaussian_kl(c.amortized_loc[i], q_cov, mean[i], cov)
        assert abs(c.kl_amortized[i] - kl_q) < 5 * c.elbo_amortized_se[i] + 1e-6
        kl_diag = gaussian_kl(mean[i], best_diag, mean[i], cov)
        assert abs(c.approximation_gap[i] - kl_diag) < 5 * c.elbo_best_se[i] + 1e-6
    # the exact posterior as proposal: every log weight is log p(x), the KL exactly 0
    np.testing.assert_allclose(c.kl_best_full, 0.0, atol=1e-5)
    np.testing.assert_allclose(c.elbo_best_full_se, 0.0, atol=1e-4)
    # IW bounds approach log p(x) from below (K = 1000: one group per image, noisy)
    assert (c.iw_shortfall[:, 1:] < c.iw_shortfall[:, :1]).all()
    assert np.abs(c.iw_shortfall[:, -1]).max() < 0.1 and c.iw_shortfall[:, 1].mean() > 0
    # the grid's marginal quantiles (of its cell histogram: O(h^2) off)
    sd = np.sqrt(np.diag(cov))
    exact = stats.norm.ppf(np.array(gaps.QUANTILES)[None, :, None], mean[:, None, :], sd)
    np.testing.assert_allclose(c.grid_quantiles, exact, atol=1e-2 * sd.min())
    # every method's draws: ArviZ summaries agree with the exact marginals
    grid = c.summaries[:, gaps.METHODS.index("grid")]
    np.testing.assert_allclose(grid[:, :, 0], mean, atol=5 * np.sqrt(cov.max()) / math.sqrt(1000))
    assert samples["grid"].shape == (1000, 4, 2)


def test_standardized_draws_have_exact_moments():
    eps = standardized_normal(16, 3, 2, torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(eps.mean(0), torch.zeros(3, 2, dtype=torch.float64))
    cov = torch.einsum("snd,sne->nde", eps, eps) / 16
    torch.testing.assert_close(cov, torch.eye(2, dtype=torch.float64).expand(3, 2, 2))


# ----------------------------------------------------------------------------- a trained VAE


@pytest.fixture(scope="module")
def trained(synthetic_mnist):
    """A latent-2 MLP VAE (Bernoulli) trained briefly on the synthetic digits."""
    import pyro

    from ppl_models import svi
    from ppl_models.batches import DeviceBatches
    from ppl_models.vae import build_networks, build_vae, load_mnist, observations

    data = load_mnist(synthetic_mnist, torch.device("cpu"))
    pyro.set_rng_seed(0)
    model, guide = build_vae(*build_networks("mlp", 2, 64), 2, "bernoulli")
    loss_fn = svi.make_objective(model, guide, svi.make_elbo("trace"))
    optimizer = torch.optim.Adam(loss_fn.parameters(), lr=3e-3)
    for _ in range(6):
        x = observations(data.train_images, "bernoulli")
        svi.train(loss_fn, optimizer, DeviceBatches(x, 64), progress=False)
    heldout = observations(data.heldout_images[:6], "bernoulli", torch.Generator().manual_seed(0))
    return model.eval(), guide.eval(), heldout


def test_elbos_bounds_and_evidence_are_ordered_on_a_trained_vae(trained):
    model, guide, x = trained
    ks = [1, 10, 100, 1000, 5000]
    c, _ = gaps.compare(model, guide, x, ks=ks, grid_points=201, best_steps=300)
    n = len(x)
    # Monte Carlo standard errors of the means over the images
    se_amortized = np.sqrt((c.elbo_amortized_se**2).sum()) / n
    se_best = np.sqrt((c.elbo_best_se**2).sum()) / n
    log_w = evaluate.importance_draws(model, guide, x, 5000).log_weights
    # one group of K = 5000 per image: the delta-method error of log mean(w), sqrt(1/ESS - 1/K)
    ess = np.array([importance.importance_ess(row) for row in log_w])
    se_iw = np.sqrt(np.maximum(1 / ess - 1 / 5000, 0).sum()) / n
    elbo_amortized, elbo_best = c.elbo_amortized.mean(), c.elbo_best.mean()
    iw_5000, log_evidence = c.iw_bound[:, -1].mean(), c.log_evidence.mean()
    assert elbo_amortized <= elbo_best + 3 * math.hypot(se_amortized, se_best)
    assert elbo_best <= iw_5000 + 3 * math.hypot(se_best, se_iw)
    assert iw_5000 <= log_evidence + 3 * se_iw
    # and per image: no best Gaussian worse than the encoder's, none above the evidence
    assert (c.amortization_gap > -3 * c.amortization_gap_se).all()
    assert (c.approximation_gap > -3 * c.elbo_best_se).all()
    assert (c.kl_best_full <= c.kl_best + 3 * np.hypot(c.elbo_best_se, c.elbo_best_full_se)).all()
    # the grid: its log p(x) does not move when refined, and its own error estimate says so (to
    # the float32 rounding of log-densities of a few hundred nats, about 1e-5 each)
    assert c.log_z_error.max() < 1e-4
    finer = posterior_grid.grid_posteriors(model, guide, x, n_points=301)
    np.testing.assert_allclose([g.log_normalizer for g in finer], c.log_evidence, atol=1e-4)
    assert c.khat_prediction()["worst_images"] == 2


def test_compare_refuses_bad_input(trained):
    model, guide, x = trained
    with pytest.raises(ValueError, match="max\\(ks\\) >= 10"):
        gaps.compare(model, guide, x, ks=[1, 5])
    with pytest.raises(ValueError, match="one row per image"):
        gaps.compare(model, guide, x, ks=[1, 10], amortized_log_weights=np.zeros((2, 10)))
    with pytest.raises(ValueError, match="particles >= 3"):
        fit_best_gaussians(model, x, torch.zeros(6, 2), torch.ones(6, 2), particles=2)
    with pytest.raises(ValueError, match="family"):
        fit_best_gaussians(model, x, torch.zeros(6, 2), torch.ones(6, 2), family="lowrank")


# ----------------------------------------------------------------------------- the job


def grid_run(synthetic_mnist, out, *extra):
    from test_vae_job import tiny

    return tiny(
        synthetic_mnist,
        out,
        "--latent-dim",
        "2",
        "--set",
        "grid_images=5",
        "--set",
        "grid_points=101",
        "--set",
        "best_steps=60",
        *extra,
    )


def test_latent2_run_writes_the_grid_section(synthetic_mnist, tmp_path):
    run = tmp_path / "run"
    assert cli.main(grid_run(synthetic_mnist, run)) == 0
    s = read_json(run / "summary.json")
    assert s["grid_images"] == 5 and s["grid_points"] == 101 and s["grid_draws"] == 100
    for key in (
        "grid_log_evidence",
        "grid_elbo_amortized",
        "grid_elbo_best",
        "grid_elbo_best_full",
        "grid_kl_amortized",
        "grid_approximation_gap",
        "grid_amortization_gap",
        "grid_khat_spearman",
        "grid_seconds",
    ):
        assert np.isfinite(s[key]) or key == "grid_khat_spearman", key
    # the gaps add up to the amortized q's KL, image by image and so on average
    assert s["grid_approximation_gap"] + s["grid_amortization_gap"] == pytest.approx(
        s["grid_kl_amortized"]
    )
    assert list(s["grid_iw_shortfall"]) == ["1", "10", "100"]
    assert s["grid_iw_shortfall"]["1"] == pytest.approx(s["grid_kl_amortized"])
    # the amortized draws are those of the evaluation: K = 1 of the first 5 IW images
    c = gaps.GridComparison.load(run / GRID_COMPARISON)
    evaluation = np.load(run / "evaluation.npz")
    np.testing.assert_allclose(c.khat, evaluation["khat"][:5])
    summaries = s["grid_figure_summaries"]
    assert len(summaries) == len(c.figure_index) >= 1
    first = next(iter(summaries.values()))
    assert set(first) == {*gaps.METHODS, "grid-quadrature"}
    assert set(first["grid"]["z_1"]) >= {"mean", "hdi_3%"}
    assert set(first["grid-quadrature"]["z_2"]) == {"mean", "sd", "q3%", "q50%", "q97%"}
    idata = diagnostics.load(run / "posterior_grid.nc")
    assert diagnostics.method_posterior(idata, "best-full")["z"].shape == (4, 250, 5, 2)

    new_figures = ["grid_posteriors.png", "inference_gaps.png", "iw_grid.png", "khat_kl.png"]
    for name in new_figures:
        assert (run / "figures" / name).is_file(), name
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 10
    assert "approximation gap" in html and "amortization gap" in html
    assert "ArviZ summaries side by side" in html and "Did k-hat predict" in html
    for png in (run / "figures").glob("*.png"):
        png.unlink()
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").read_text().count("data:image/png;base64,") == 10


def test_grid_settings_are_validated(synthetic_mnist, tmp_path, capsys):
    assert cli.main(grid_run(synthetic_mnist, tmp_path / "a", "--set", "grid_images=9")) == 2
    assert "grid_images must be at most iw_images (8)" in capsys.readouterr().err
    assert cli.main(grid_run(synthetic_mnist, tmp_path / "b", "--set", "grid_points=100")) == 2
    assert "grid_points must be an odd integer >= 5, got 100" in capsys.readouterr().err
    assert cli.main(grid_run(synthetic_mnist, tmp_path / "c", "--set", "best_particles=2")) == 2
    assert "best_particles must be an integer >= 3" in capsys.readouterr().err


def test_bench_vae_grid_writes_a_table_and_json(synthetic_mnist, tmp_path, capsys):
    args = ["bench", "vae-grid", "--device", "cpu", "--images", "2", "--grid-points", "21"]
    args += ["--hidden-dim", "16", "--data-dir", str(synthetic_mnist), "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert "2 images at 21 x 21 points" in capsys.readouterr().out
    result = read_json(tmp_path / "bench.json")
    assert result["benchmark"] == "vae-grid" and result["final_grid_points"] == 2 * 21**2
    assert result["seconds"] > 0 and result["peak_memory_bytes"] > 0
