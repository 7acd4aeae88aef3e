"""diagnose() -> write_report() -> rebuild_report(): the run's files and the page."""

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from vi_helpers import FakeFit, gaussian_problem, normal_guide

from ppl_models import diagnostics
from ppl_models.vi.diagnose import diagnose
from ppl_models.vi.references import Reference
from ppl_models.vi.report import rebuild_report, write_report

ISSUE_KEYS = {
    "status", "guide", "elbo", "psis_khat", "psis_khat_threshold", "importance_ess",
    "iw_bounds", "iw_bounds_se", "cubo2", "d2", "error_bounds", "parameters", "verdict",
}  # fmt: skip
PARAMETER_KEYS = {
    "name", "mean", "sd", "ref_mean", "ref_sd", "std_mean_error", "sd_ratio", "w1_over_sd", "ks",
}  # fmt: skip
FIGURES = {"marginals.png", "pairs.png", "trace.png", "weights.png", "bounds.png"}


def _model(y):
    d = y.shape[-1]
    with pyro.plate("d", d):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 10.0))
        with pyro.plate("n", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    tau = pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 0.5))
    pyro.deterministic("total", mu.sum(-1, keepdim=True) * tau)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    _, data, m, s = gaussian_problem(d=3, n=5)
    shifted = normal_guide(m + torch.tensor([0.0, 0.0, 0.6]) * s, torch.full_like(m, s))

    def guide(y):
        shifted(y)
        pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 0.5))

    rng = np.random.default_rng(0)
    ref = Reference({"mu": rng.normal(m.numpy(), s, size=(4, 1000, 3))}, "exact draws (test)")
    fit = FakeFit(_model, guide, data, max_plate_nesting=2, guide_name="custom")
    diagnosis = diagnose(fit, ref, draws=8000, progress=False)
    out = tmp_path_factory.mktemp("run")
    write_report(diagnosis, out)
    return diagnosis, out


def test_summary_has_the_issue_keys_in_strict_json(run):
    diagnosis, out = run
    text = (out / "summary.json").read_text()
    summary = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert ISSUE_KEYS <= set(summary) and summary["model"] == "fit"
    assert summary["status"] == "complete"
    assert set(summary["error_bounds"]) == {"w1", "w2", "mean_error", "sd_error"}
    assert set(summary["iw_bounds"]) == {"1", "10", "100", "1000"}
    assert summary["verdict"] in ("trustworthy", "means-only", "not-trustworthy")
    names = [p["name"] for p in summary["parameters"]]
    assert names == ["mu[1]", "mu[2]", "mu[3]", "tau", "total[1]"]
    for p in summary["parameters"]:
        assert PARAMETER_KEYS <= set(p)
    tau = summary["parameters"][3]
    assert tau["ref_mean"] is None and tau["std_mean_error"] is None and tau["ks"] is None
    # the third mean is 0.6 sd off the reference: named, and the fit is not trustworthy
    assert summary["verdict"] == "not-trustworthy"
    assert "mu[3]" in summary["verdict_off"] and "mu[1]" not in summary["verdict_off"]
    assert summary["convergence_rule"].startswith("relative ELBO change")
    assert "unconstrained" in summary["error_bounds_space"]


def test_posterior_file_holds_draws_reference_and_log_densities(run):
    diagnosis, out = run
    idata = diagnostics.load(out / "posterior.nc")
    assert {"posterior", "reference_posterior", "sample_stats"} <= set(idata.groups())
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "tau", "total"}
    assert post["mu"].shape == (4, 2000, 3) and post["tau"].shape == (4, 2000)
    assert post["total"].shape == (4, 2000, 1)
    np.testing.assert_allclose(
        post["total"].values[..., 0], post["mu"].values.sum(-1) * post["tau"].values
    )
    assert idata.reference_posterior["mu"].shape == (4, 1000, 3)
    stats = idata.sample_stats
    log_w = (stats["log_joint"] - stats["log_q"]).values.ravel()
    assert len(log_w) == 8000
    assert float(np.mean(log_w)) == pytest.approx(diagnosis.summary["elbo"], rel=1e-12)


def test_report_page_leads_with_the_verdict_and_embeds_every_figure(run):
    _, out = run
    html = (out / "report.html").read_text()
    assert {p.name for p in (out / "figures").glob("*.png")} == FIGURES
    assert html.count("data:image/png;base64,") == len(FIGURES)
    verdict_at = html.index("NOT TRUSTWORTHY")
    assert verdict_at < html.index("Side by side")
    assert "mu[3]" in html[verdict_at : html.index("Side by side")]
    assert "unconstrained space" in html
    assert "relative ELBO change" in html  # the convergence rule


def test_rebuild_report_from_the_run_files_alone(run):
    _, out = run
    (out / "report.html").unlink()
    for png in (out / "figures").glob("*.png"):
        png.unlink()
    path = rebuild_report(out)
    assert path == out / "report.html" and path.is_file()
    assert {p.name for p in (out / "figures").glob("*.png")} == FIGURES
    with pytest.raises(FileNotFoundError, match="summary.json"):
        rebuild_report(out / "figures")


def test_json_numbers_never_inf_or_nan(run):
    diagnosis, _ = run
    for p in diagnosis.summary["parameters"]:
        for v in p.values():
            assert not (isinstance(v, float) and not math.isfinite(v))


def test_write_report_refuses_a_folder_that_holds_another_run(run, tmp_path):
    """Writing into a folder that holds files (an earlier run's, say) would mix two runs: an
    auto-normal config.toml beside an auto-mvn summary.json. It is refused, as the CLI refuses
    --out; overwrite=True replaces the earlier run's files and keeps nothing of it."""
    diagnosis, _ = run
    out = tmp_path / "my-run"
    write_report(diagnosis, out)
    (out / "config.toml").write_text('[fit]\nguide = "auto-normal"\n')
    (out / "metrics.jsonl").write_text('{"step": 0, "loss": 99.0}\n')
    (out / "figures" / "stale.png").write_bytes(b"not a figure of this run")
    (out / "notes.txt").write_text("the user's own file")
    before = (out / "summary.json").read_bytes()
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        write_report(diagnosis, out)
    assert (out / "summary.json").read_bytes() == before  # nothing written
    write_report(diagnosis, out, overwrite=True)
    assert "auto-normal" not in (out / "config.toml").read_text()
    assert '"loss": 99.0' not in (out / "metrics.jsonl").read_text()
    assert not (out / "figures" / "stale.png").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # not a run file: kept
    assert json.loads((out / "summary.json").read_text())["status"] == "complete"
    with pytest.raises(ValueError, match="not a folder"):
        write_report(diagnosis, out / "notes.txt")


# ----------------------------------------------------------------------------- the first screen


def _first_screen(html: str) -> str:
    return html[html.index('id="verdict"') : html.index("<details")]


def test_the_first_screen_has_the_badge_why_steps_and_five_numbers(run):
    _, out = run
    html = (out / "report.html").read_text()
    first = _first_screen(html)
    assert 'class="badge bad"' in first and "NOT TRUSTWORTHY" in first
    assert "mu[3]" in first  # the one sentence on why names the element that is off
    assert "What to do next" in first and "--reference" not in first  # it has a reference
    for name in ("PSIS k-hat", "Importance ESS", "ELBO", "Worst element vs reference", "Time"):
        assert name in first, name
    for href in ("#side-by-side", "#evidence", "#timings", "#figure-importance-weights"):
        assert f'href="{href}"' in first and f'id="{href[1:]}"' in html, href
    # the rules and the notes are collapsed, below the first screen
    assert html.index("Rules of the verdict") > html.index("What to do next")
    assert "<summary>Rules of the verdict</summary>" in html


def test_numbers_are_not_printed_to_six_digits(run):
    diagnosis, out = run
    html = (out / "report.html").read_text()
    mu1 = diagnosis.summary["parameters"][0]
    assert f"{mu1['mean']:.6g}" not in html  # six significant digits: mostly noise
    assert "diagnosis seconds" not in html  # one compact timings row instead of seven
    timings = html[html.index('id="timings"') :]
    assert timings.index("<tbody>") < timings.index(" s</td>") < timings.index("</table>")


@pytest.fixture(scope="module")
def run_without_reference(tmp_path_factory):
    _, data, m, s = gaussian_problem(d=3, n=5)
    guide = normal_guide(m, torch.full_like(m, s))
    model = gaussian_problem(d=3, n=5)[0]
    fit = FakeFit(model, guide, data, max_plate_nesting=2, guide_name="auto-normal")
    diagnosis = diagnose(fit, None, draws=4000, progress=False, mode_starts=0)
    out = tmp_path_factory.mktemp("no-reference")
    write_report(diagnosis, out)
    return diagnosis, out


def test_without_a_reference_no_column_is_dashes_and_no_row_says_not_compared(
    run_without_reference,
):
    _, out = run_without_reference
    html = (out / "report.html").read_text()
    side = html[
        html.index('id="side-by-side"') : html.index("</table>", html.index('id="side-by-side"'))
    ]
    assert "ref mean" not in side and "KS" not in side and "not compared" not in side
    assert "PSIS mean" in side and "PSIS agrees" in side
    assert "PSIS k-hat: mean / sd" in side  # each estimate's own k-hat, beside it


def test_an_element_whose_psis_estimate_is_unreliable_does_not_read_as_agreeing():
    from ppl_models.vi.report import _status

    summary = {"draws": 4000, "verdict_checks": {"self": {"psis_sd_unreliable": ["a"]}}}
    row = {"name": "a", "ref_mean": None, "psis_khat_mean": 0.5, "psis_khat_sd": 0.9}
    assert _status(row, summary) == "PSIS cannot check the sd"
    summary["verdict_checks"]["self"]["psis_mean_off"] = ["a"]
    assert _status(row, summary) == "PSIS moves the mean; PSIS cannot check the sd"


def test_the_fit_notes_how_it_started_and_which_sites_scale_which(run):
    diagnosis, out = run
    summary = json.loads((out / "summary.json").read_text())
    # _model: mu ~ Normal(0, 10), tau ~ LogNormal(0, 0.5): nothing scales anything
    assert summary["model_structure"] == {"scale_parents": {}, "loc_parents": {}}
    assert summary["fit_start"] == {"method": None, "collapsed": []}  # a custom guide


def test_the_findings_are_recovered_from_summary_json_alone(run, run_without_reference):
    from ppl_models.vi import advice

    for _, out in (run, run_without_reference):
        summary = json.loads((out / "summary.json").read_text())
        findings = advice.findings_of(summary)
        assert findings, "the verdict's findings could not be recovered"
        assert [advice.headline(findings, summary)] != [""]
    assert advice.findings_of({"verdict": "trustworthy"}) is None  # an old or partial summary


def _funnel(y):
    tau = pyro.sample("tau", dist.HalfNormal(torch.ones((), dtype=y.dtype)))
    with pyro.plate("groups", y.shape[-1]):
        theta = pyro.sample("theta", dist.Normal(torch.zeros((), dtype=y.dtype), tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _mean_field_funnel_guide(y):
    pyro.sample("tau", dist.LogNormal(torch.zeros((), dtype=y.dtype), 0.3))
    with pyro.plate("groups", y.shape[-1]):
        pyro.sample("theta", dist.Normal(torch.zeros((), dtype=y.dtype), 0.8))


def test_the_pair_plot_shows_the_pairs_the_checks_blame(tmp_path):
    """The pair plot showed q's draws of the elements furthest off, which are independent under
    a mean-field q, so the funnel that the verdict blames could not be seen. It now plots each
    site against the site that is its scale in the model, beside what importance sampling
    makes of q's draws (no reference here), and says how the pairs were picked."""
    y = torch.tensor([0.3, -1.2, 2.5, 0.1, -0.4], dtype=torch.float64)
    fit = FakeFit(_funnel, _mean_field_funnel_guide, {"y": y}, guide_name="auto-normal")
    diagnosis = diagnose(fit, None, draws=4000, progress=False, mode_starts=0)
    write_report(diagnosis, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model_structure"]["scale_parents"] == {"theta": ["tau"]}
    html = (tmp_path / "run" / "report.html").read_text()
    figure = html[html.index('id="figure-pairs-the-checks-blame"') :]
    caption = figure[: figure.index("</figcaption>")]
    assert (
        "tau is the scale of theta" in caption and "3 of 5 theta elements furthest off" in caption
    )
    assert "PSIS weights" in caption
