"""The exponential-normal job: SVI accuracy against theta*, families, the run contract, the CLI."""

import base64
import contextlib
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ppl_models import cli, exp_normal
from ppl_models.jobs.exp_normal import ExpNormalConfig
from ppl_models.jobs.exp_normal.fitting import fit
from ppl_models.svi import seed_everything

RUN_FILES = [
    "config.toml",
    "env.json",
    "metrics.jsonl",
    "summary.json",
    "posterior.nc",
    "report.html",
]
SUMMARY_KEYS = [
    "theta_star",
    "theta_svi",
    "theta_rel_error",
    "log_evidence_exact",
    "log_evidence_grid",
    "elbo_at_theta_star",
    "kl_at_theta_star",
    "kl_at_theta_svi",
    "psis_khat",
    "iw_bounds",
    "grid_max_abs_pdf_error",
    "observations",
    "posterior_table",
]


def _fit(x, **overrides):
    config = ExpNormalConfig(device="cpu", **overrides)
    return fit(torch.as_tensor(x, dtype=torch.float64), config, progress=False)


@pytest.mark.parametrize(
    ("n_obs", "rate", "seed"), [(5, 1.0, 0), (1, 0.5, 1), (20, 2.0, 2), (200, 1.0, 3), (50, 3.0, 4)]
)
def test_svi_lands_within_half_a_percent_of_theta_star(n_obs, rate, seed):
    _, x = exp_normal.simulate(rate, n_obs, seed)
    seed_everything(seed)
    fitted = _fit(x, rate=rate, n_obs=n_obs, seed=seed)
    theta_star = exp_normal.optimal_theta(x, rate)
    assert fitted.params["theta"] == pytest.approx(theta_star, rel=0.005)


def test_svi_with_the_sum_below_the_rate():
    x = np.array([-0.8, 0.3, -1.2, 0.1])
    rate = 2.0
    assert x.sum() < rate
    seed_everything(5)
    fitted = _fit(x, rate=rate, n_obs=4)
    assert fitted.params["theta"] == pytest.approx(exp_normal.optimal_theta(x, rate), rel=0.005)


def test_meanfield_elbo_also_converges():
    _, x = exp_normal.simulate(1.0, 5, 0)
    seed_everything(1)
    fitted = _fit(x, elbo="meanfield")
    assert fitted.params["theta"] == pytest.approx(exp_normal.optimal_theta(x, 1.0), rel=0.005)


@pytest.mark.parametrize("family", ["gamma", "lognormal", "truncated-normal"])
def test_other_families_reach_their_optimal_kl(family):
    _, x = exp_normal.simulate(1.0, 5, 0)
    seed_everything(2)
    fitted = _fit(x, guide=family, steps=600)
    q = exp_normal.guide_distribution(family, fitted.params, validate_args=False)
    kl_fit = exp_normal.kl_of(q, x, 1.0)
    best = exp_normal.guide_distribution(
        family, exp_normal.optimal_guide_params(family, x, 1.0), validate_args=False
    )
    kl_best = exp_normal.kl_of(best, x, 1.0)
    assert -1e-9 <= kl_best <= kl_fit + 1e-9 and kl_fit <= kl_best + 0.01
    if family == "truncated-normal":
        assert kl_fit < 0.01


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(
            ["exp-normal", "--out", str(out), "--quiet", "--set", "draws=2000", "--steps", "300"]
        )
    assert code == 0
    (out.parent / "stdout.txt").write_text(printed.getvalue())
    return out


def test_cli_writes_the_whole_run_contract(finished_run):
    for name in RUN_FILES:
        assert (finished_run / name).is_file(), name
    figures = sorted(p.name for p in (finished_run / "figures").glob("*.png"))
    assert len(figures) >= 5
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["status"] == "complete"
    for key in SUMMARY_KEYS:
        assert key in summary, key
    assert set(summary["iw_bounds"]) == {"1", "10", "100", "1000"}
    assert set(summary["posterior_table"]) >= {"variational", "grid", "exact"}
    env = json.loads((finished_run / "env.json").read_text())
    assert env["seed"] == 0 and env["device"] == "cpu" and env["versions"]["pyro-ppl"]
    steps = [
        json.loads(line)
        for line in (finished_run / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    assert [m["step"] for m in steps] == list(range(300))
    assert {"loss", "theta", "lr"} <= set(steps[0])


def test_summary_numbers_agree_with_independent_references(finished_run):
    s = json.loads((finished_run / "summary.json").read_text())
    x = np.asarray(s["observations"]["values"])
    torch.manual_seed(0)
    z = torch.distributions.Exponential(1.0).sample()
    assert np.allclose(x, torch.distributions.Normal(z, 1.0).sample((5,)).numpy())
    assert s["theta_rel_error"] < 0.005
    assert s["log_evidence_grid"] == pytest.approx(s["log_evidence_exact"], abs=1e-9)
    assert s["kl_at_theta_star_grid"] == pytest.approx(s["kl_at_theta_star"], abs=1e-8)
    assert s["grid_max_abs_pdf_error"] < 1e-6
    bounds = [s["iw_bounds"][k] for k in ("1", "10", "100", "1000")]
    assert bounds[0] == pytest.approx(s["elbo_at_svi"], abs=4 * s["iw_bounds_se"]["1"])
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] <= s["log_evidence_exact"] + 3 * s["iw_bounds_se"]["1000"]
    exact = s["posterior_table"]["exact (closed form)"]
    grid_row = s["posterior_table"]["grid"]
    assert grid_row["mean"] == pytest.approx(exact["mean"], abs=4 * exact["sd"] / np.sqrt(2000))


GENERIC_KEYS = [
    "status",
    "guide",
    "elbo",
    "psis_khat",
    "psis_khat_threshold",
    "importance_ess",
    "iw_bounds",
    "iw_bounds_se",
    "cubo2",
    "d2",
    "error_bounds",
    "parameters",
    "verdict",
]


def test_the_generic_diagnosis_rides_along_and_holds_against_the_closed_forms(finished_run):
    s = json.loads((finished_run / "summary.json").read_text())
    for key in GENERIC_KEYS:
        assert key in s, key
    assert s["model"] == "exp-normal" and s["guide"] == "exponential"
    x = np.asarray(s["observations"]["values"])
    log_px = exp_normal.log_evidence(x, 1.0)
    # CUBO_2 >= log p(x) >= ELBO, with the closed forms as the truth
    assert s["cubo2"] >= log_px >= s["elbo"] - 4 * s["elbo_se"]
    assert s["elbo"] == pytest.approx(exp_normal.elbo(s["theta_svi"], x, 1.0), abs=4 * s["elbo_se"])
    # the reference is the exact posterior: its mean and sd match the closed form
    (z,) = s["parameters"]
    exact = exp_normal.exact_posterior(x, 1.0)
    assert z["name"] == "z"
    assert z["ref_mean"] == pytest.approx(float(exact.mean), abs=5 * float(exact.stddev) / 40)
    assert z["ref_sd"] == pytest.approx(float(exact.stddev), rel=0.1)
    # the exponential guide is 11 nats off: the verdict must not call it trustworthy
    assert s["verdict"] != "trustworthy" and "z" in s["verdict_off"]
    # VIABEL's bounds hold against the errors measured on the exact draws
    (coordinate,) = s["error_bounds_per_coordinate"]
    assert coordinate["measured_mean_error"] <= coordinate["mean_error"]
    assert coordinate["measured_sd_error"] <= coordinate["sd_error"]


def test_report_embeds_figures_and_is_regenerated(finished_run, capsys):
    html = (finished_run / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Verdict" in html and "Provenance" in html and "theta" in html
    (finished_run / "report.html").unlink()
    for png in (finished_run / "figures").glob("*.png"):
        png.unlink()
    assert cli.main(["report", str(finished_run)]) == 0
    assert (finished_run / "report.html").read_text().count("data:image/png;base64,") == len(images)
    assert "report:" in capsys.readouterr().out


def test_khat_is_low_when_q_is_the_exact_posterior():
    _, x = exp_normal.simulate(1.0, 5, 0)
    from ppl_models import diagnostics

    exact = exp_normal.exact_posterior(x, 1.0)
    z = exact.sample((4000,))
    log_w = exp_normal.log_joint(z.numpy(), x, 1.0) - exact.log_prob(z).numpy()
    assert np.ptp(log_w) < 1e-9  # weights uniform: log w = log p(x) for every draw
    assert np.allclose(log_w, exp_normal.log_evidence(x, 1.0))
    assert diagnostics.psis_khat(log_w) < 0.5


def _bad(args, capsys, tmp_path):
    out = tmp_path / "run"
    code = cli.main(["exp-normal", "--quiet", "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    summary = out / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"
    return err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("1.0\nnan\n2.0\n", "line 2 is not a finite number"),
        ("1.0\ninf\n", "line 2"),
        ("", "empty"),
        ("1.0\nabc\n", "line 2"),
    ],
)
def test_bad_observations(tmp_path, capsys, content, message):
    data = tmp_path / "obs.txt"
    data.write_text(content)
    assert message in _bad(["--data", str(data)], capsys, tmp_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "rate must be a positive finite number, got 0"),
        (["--rate", "-1"], "rate must be a positive finite number, got -1"),
        (["--particles", "0"], "particles must be an integer >= 1, got 0"),
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--set", "bogus=1"], "unknown config key 'bogus'"),
        (["--data", "no/such/file.csv"], "no/such/file.csv"),
        (["--set", "steps=many"], "config key 'steps' expects int"),
    ],
)
def test_bad_settings(tmp_path, capsys, args, message):
    assert message in _bad(args, capsys, tmp_path)


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(["exp-normal", "--quiet", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot write the run directory" in err and "Traceback" not in err


def test_npy_and_csv_data_are_read(tmp_path, capsys):
    x = np.array([0.3, 1.2, 2.2, 0.9])
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "x.csv").write_text("\n".join(map(str, x)) + "\n")
    for name in ("x.npy", "x.csv"):
        out = tmp_path / f"run-{name}"
        assert (
            cli.main(
                [
                    "exp-normal",
                    "--quiet",
                    "--data",
                    str(tmp_path / name),
                    "--out",
                    str(out),
                    "--set",
                    "draws=1000",
                    "--steps",
                    "50",
                ]
            )
            == 0
        )
        summary = json.loads((out / "summary.json").read_text())
        assert summary["observations"]["count"] == 4
        assert summary["theta_star"] == pytest.approx(exp_normal.optimal_theta(x, 1.0))


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppl_models",
            "exp-normal",
            "--rate",
            "-2",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "ppl-models: error: rate must be a positive finite number, got -2.0"
    )


@pytest.mark.cuda
def test_svi_on_cuda_lands_within_half_a_percent():
    _, x = exp_normal.simulate(1.0, 5, 0)
    seed_everything(0)
    config = ExpNormalConfig(device="cuda")
    fitted = fit(torch.as_tensor(x, dtype=torch.float64, device="cuda"), config, progress=False)
    assert fitted.params["theta"] == pytest.approx(exp_normal.optimal_theta(x, 1.0), rel=0.005)


def test_the_job_module_imports_no_heavy_library():
    # issue 8: `ppl-models exp-normal --help` and the config's validation need neither torch,
    # Pyro nor NumPy; the fit and report import them when they run.
    code = (
        "import sys, argparse\n"
        "from ppl_models.jobs import exp_normal as job\n"
        "parser = argparse.ArgumentParser()\n"
        "job.add_arguments(parser)\n"
        "job.config_from_args(parser.parse_args(['--rate', '2', '--guide', 'gamma']))\n"
        "print(sorted(m for m in ('torch', 'pyro', 'numpy') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.strip() == "[]"


def test_torch_free_choices_match_the_libraries():
    from ppl_models import options, svi
    from ppl_models.jobs.exp_normal import config as job

    assert job.ELBO_KINDS is svi.ELBO_KINDS is options.ELBO_KINDS  # one definition


def test_names_moved_to_the_package_are_still_reachable_from_the_job_module():
    from ppl_models.jobs import exp_normal as job
    from ppl_models.jobs.exp_normal import analysis, fitting, report

    assert job.fit is fitting.fit and job.Fit is fitting.Fit and job.analyse is analysis.analyse
    assert job.verdict is report.verdict and job.tables is report.tables
    assert job.TOLERANCE == 0.005 and job.IW_DRAWS == analysis.IW_DRAWS
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        job.nothing  # noqa: B018


def test_the_report_and_the_command_say_what_the_fit_cost_and_why(finished_run, capsys):
    """exp-normal --n-obs 1000 --guide gamma spent 88 s fitting, against 3 s for the default
    run, and nothing said why: every step evaluates n_obs observations under every particle,
    whatever the guide family (the exponential guide costs the same at n_obs = 1000)."""
    from ppl_models.jobs.exp_normal.report import fit_cost

    s = json.loads((finished_run / "summary.json").read_text())
    html = (finished_run / "report.html").read_text()
    words = fit_cost(s)
    assert "4,096 particles" in words and "5 observations" in words and "300 steps" in words
    assert "whatever the guide" in words and "--particles" in words
    assert words.replace("`--particles 256`", "<code>--particles 256</code>") in html
    printed = (finished_run.parent / "stdout.txt").read_text()
    assert words.replace("`", "") in printed
