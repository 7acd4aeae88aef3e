"""``ppl-models bench fit``: with tiny settings it prints its table and writes bench.json of the
documented shape (timings are never asserted), and bad options are one-line errors."""

import pyro
import pytest
import torch

from ppl_models import cli
from ppl_models.bench import fit as bench
from ppl_models.jobs.fit.config import FitConfig
from ppl_models.runs import read_json

STAGES = (
    "total",
    "total_cpu",
    "fit",
    "fit_cpu",
    "fit_init",
    "fit_steps",
    "diagnose",
    "diagnose_draws",
    "diagnose_weights_and_bounds",
    "diagnose_compare",
    "diagnose_other",
    "report_and_files",
)


def test_bench_fit_writes_a_table_and_json(tmp_path, capsys):
    pyro.clear_param_store()
    pyro.param("users_own", torch.ones(1))
    out = tmp_path / "new" / "folder"  # created when missing
    args = ["bench", "fit", "--models", "normal_mean", "--steps", "30", "--particles", "2"]
    args += ["--draws", "200", "--nuts-warmup", "5", "--nuts-draws", "5", "--nuts-chains", "1"]
    args += ["--no-warmup", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "fit/plain" in printed and "normal_mean" in printed and "bench.json" in printed
    result = read_json(out / "bench.json")
    assert result["benchmark"] == "fit" and result["device"] == "cpu"
    assert result["settings"] == {
        "steps": 30,
        "particles": 2,
        "lr": FitConfig().lr,
        "draws": 200,
        "nuts": {"warmup": 5, "draws": 5, "chains": 1},
    }
    assert result["targets"] == {"seconds": 15.0, "parameters": 10, "fit_overhead": 1.1}
    [row] = result["models"]
    assert row["model"] == "normal_mean" and row["guide"] == "auto-normal"
    run = row["fit_command"]
    assert set(STAGES) <= set(run)
    assert all(run[k] >= 0 for k in ("total", "fit", "fit_init", "diagnose", "diagnose_draws"))
    assert run["parameters"] == 1 and run["draws"] == 200
    assert run["verdict"] in ("trustworthy", "means-only", "not-trustworthy")
    assert row["plain_pyro"]["guide"] == "AutoNormal" and row["plain_pyro"]["seconds"] > 0
    assert row["nuts"]["chains"] == 1 and row["nuts"]["seconds"] > 0
    assert row["fit_overhead"] == pytest.approx(run["fit"] / row["plain_pyro"]["seconds"])
    assert row["plain_pyro"]["cpu_seconds"] > 0 and row["fit_overhead_cpu"] > 0
    assert isinstance(row["meets_time_target"], bool)
    # the baseline leaves the user's parameter store as it was
    assert list(pyro.get_param_store().keys()) == ["users_own"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "nope"], "--models must name"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--draws", "10"], "--draws must be >= 100"),
    ],
)
def test_bench_fit_bad_options_are_one_line_errors(extra, message, tmp_path, capsys):
    assert cli.main(["bench", "fit", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_every_bench_model_has_a_shipped_script():
    assert all((bench.DEFAULT_SCRIPTS / f"{m.name}.py").is_file() for m in bench.MODELS)


def test_bench_fit_compare_pyro_writes_both_fits_per_row(tmp_path, capsys):
    pyro.clear_param_store()
    pyro.param("users_own", torch.ones(1))
    out = tmp_path / "compare"
    args = ["bench", "fit", "--compare-pyro", "--models", "normal_mean,flat_regression"]
    args += ["--steps", "30", "--particles", "2", "--moment-draws", "200", "--no-warmup"]
    args += ["--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "plain Pyro ELBO" in printed and "never worse than plain Pyro" in printed
    assert "flat_regression: plain_pyro failed" in printed
    result = read_json(out / "bench.json")
    assert result["benchmark"] == "fit" and result["mode"] == "compare-pyro"
    assert result["settings"]["steps"] == 30 and result["settings"]["particles"] == 2
    assert result["settings"]["elbo_draws"] == 2048 and result["settings"]["pyro_lr"] == 0.02
    normal, flat = result["posteriors"]
    assert normal["posterior"] == "normal_mean" and flat["posterior"] == "flat_regression"
    for part in ("package", "plain_pyro"):
        fit = normal[part]
        assert fit["seconds"] > 0 and fit["elbo_se"] > 0 and fit["elbo"] < 0
        assert fit["accuracy"]["elements"] == 1 and fit["accuracy"]["max_mean_error"] >= 0
    assert normal["plain_pyro"]["guide"] == "AutoNormal"
    assert isinstance(normal["never_worse"], bool)
    assert flat["package"]["elbo"] is not None and "flat prior" in flat["plain_pyro"]["error"]
    # plain Pyro's fit used a parameter store of its own: the user's is as it was
    assert list(pyro.get_param_store().keys()) == ["users_own"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "nope"], "--models must name"),
        (["--moment-draws", "10"], "--moment-draws must be >= 100"),
        (["--pyro-lr", "0"], "--pyro-lr must be > 0"),
        (["--particles", "0"], "--particles must be >= 1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bench_fit_compare_pyro_bad_options_are_one_line_errors(extra, message, tmp_path, capsys):
    assert cli.main(["bench", "fit", "--compare-pyro", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bench.json").exists()
