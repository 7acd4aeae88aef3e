"""``ppl-models bench ladder`` and ``fit --auto`` on the shipped posteriordb scripts.

The benchmark runs end to end with tiny settings (timings are never asserted). The climb on a
posteriordb script, without a reference, must end ``trustworthy`` with every element within
0.1 sd in mean and 10% in sd of posteriordb's reference draws. Centred eight schools (a funnel
that needs the non-centred model and its PSIS correction) is the quick representative; the
other scripts are marked slow (``-m "not slow"`` leaves them out; docs/benchmarks.md records
all of them). On Gull's lighthouses (``runs/lighthouses.py``, slow) only the NUTS rung may
certify, and its answer must agree with the exact quadrature moments.
"""

import numpy as np
import pytest

from ppl_models import cli, fit_auto, load_reference
from ppl_models.bench import ladder as bench
from ppl_models.bench.posteriors import DEFAULT_SCRIPTS
from ppl_models.runs import read_json
from ppl_models.vi.references import Reference
from ppl_models.vi.script import load_script, posteriordb_dir


def _reference(draws: dict) -> Reference:
    return Reference(draws=draws, source="test")


def test_row_errors_are_standardised_against_the_reference_draws():
    rng = np.random.default_rng(0)
    ref = _reference({"a": rng.normal(1.0, 2.0, (2, 5000)), "b": rng.normal(0, 1, (2, 5000, 2))})
    d = ref.draws["a"]
    rows = [
        {"name": "a", "mean": d.mean() + 0.2 * d.std(), "sd": 1.3 * d.std()},
        {"name": "b[1]", "mean": ref.draws["b"][..., 0].mean(), "sd": ref.draws["b"][..., 0].std()},
        {"name": "c", "mean": 5.0, "sd": 1.0},  # not in the reference: left out
    ]
    out = bench.row_errors(rows, ref)
    assert out["max_mean_error_sd"] == pytest.approx(0.2)
    assert out["max_sd_error"] == pytest.approx(0.3)
    assert out["max_mean_error_element"] == "a" == out["max_sd_error_element"]
    assert set(out["elements"]) == {"a", "b[1]"} and out["elements"]["b[1]"] == [0.0, 0.0]
    assert out["within_0.1sd_and_10pct"] is False


def test_a_climbs_target_is_03_where_a_variational_rung_answers_else_15():
    nuts = {"seconds": 20.0, "cpu_seconds": 10.0}
    vi = {"seconds": 5.0, "cpu_seconds": 4.0, "verdict": "trustworthy", "answer": "psis"}
    bench._ratios(vi, nuts)
    assert vi["over_nuts_cpu"] == pytest.approx(0.4) and vi["target"] == 0.3
    assert vi["meets_target"] is False
    mcmc = {"seconds": 30.0, "cpu_seconds": 12.0, "verdict": "trustworthy", "answer": "nuts"}
    bench._ratios(mcmc, nuts)
    assert mcmc["target"] == 1.5 and mcmc["meets_target"] is True


def test_bench_ladder_writes_a_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "ladder", "--models", "sblri_blr", "--steps", "200", "--draws", "1000"]
    args += ["--nuts-warmup", "50", "--nuts-draws", "50", "--no-numpyro", "--no-self"]
    args += ["--budget", "60", "--repeats", "2", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "sblri_blr" in printed and "NUTS rung" in printed and "bench.json" in printed
    result = read_json(out / "bench.json")
    assert result["benchmark"] == "ladder" and result["device"] == "cpu"
    assert result["targets"] == {"auto_over_nuts_vi": 0.3, "auto_over_nuts_nuts": 1.5}
    [row] = result["models"]
    assert row["model"] == "sblri_blr" and "auto_self" not in row and "numpyro" not in row
    auto, nuts = row["auto"], row["nuts_rung"]
    assert auto["rungs"][0]["rung"] == "guide" and auto["cpu_seconds"] > 0
    assert auto["over_nuts_cpu"] == pytest.approx(auto["cpu_seconds"] / nuts["cpu_seconds"])
    assert set(auto["errors"]["elements"]) >= {"beta[1]", "sigma"}
    assert nuts["checks"]["warmup"] == 50 and nuts["checks"]["chains"] == 4
    assert nuts["cpu_seconds"] == pytest.approx(nuts["fit_cpu_seconds"] + nuts["nuts_cpu_seconds"])
    for run in (auto, nuts):  # two turns each, the cheaper kept
        assert len(run["cpu_seconds_repeats"]) == 2
        assert run["cpu_seconds"] == min(run["cpu_seconds_repeats"])


def test_repeats_keep_the_run_of_least_cpu_time_with_every_turns_time():
    runs = [{"cpu_seconds": 3.0, "verdict": "a"}, {"cpu_seconds": 2.5, "verdict": "b"}]
    kept = bench.least_cpu(runs + [{"cpu_seconds": 2.9, "verdict": "c"}])
    assert kept == {"cpu_seconds": 2.5, "verdict": "b", "cpu_seconds_repeats": [3.0, 2.5, 2.9]}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--models", "nope"], "--models must name"),
        (["--budget", "0"], "--budget must be"),
        (["--repeats", "0"], "--repeats must be at least 1, got 0"),
    ],
)
def test_bench_ladder_bad_options_are_one_line_errors(extra, message, tmp_path, capsys):
    assert cli.main(["bench", "ladder", *extra, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_every_ladder_model_has_a_script_and_a_numpyro_twin():
    twins = bench.numpyro_twins() if _has_numpyro() else {m.name: None for m in bench.MODELS}
    for m in bench.MODELS:
        assert (DEFAULT_SCRIPTS / f"{m.name}.py").is_file()
        assert m.name in twins


def _has_numpyro() -> bool:
    try:
        import numpyro  # noqa: F401
    except ImportError:
        return False
    return True


POSTERIORDB = [m for m in bench.MODELS if m.reference.startswith("posteriordb:")]


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(m, marks=() if m.name == "eight_schools_centered" else pytest.mark.slow)
        for m in POSTERIORDB
    ],
    ids=lambda m: m.name,
)
def test_auto_certifies_each_posteriordb_script_within_01_sd_and_10_percent(model):
    posterior = model.reference.removeprefix("posteriordb:")
    if not (posteriordb_dir() / posterior).is_dir():
        pytest.skip(f"posteriordb data not found under {posteriordb_dir()}")
    script = load_script(DEFAULT_SCRIPTS / f"{model.name}.py")
    ladder = fit_auto(script.model, script.load_data(), seed=0)
    assert ladder.verdict == "trustworthy", ladder.summary_sentence()
    errors = bench.row_errors(
        ladder.diagnosis.summary["parameters"], load_reference(model.reference)
    )
    assert errors["elements"], "no element matched the reference"
    assert errors["max_mean_error_sd"] <= 0.1, errors
    assert errors["max_sd_error"] <= 0.1, errors


@pytest.mark.slow
def test_auto_certifies_the_lighthouses_only_at_nuts_agreeing_with_quadrature():
    """Cauchy flashes give polynomial posterior tails: every variational rung (auto-normal,
    auto-mvn, the flow) is refused for its k-hat above 0.7 and so is each PSIS correction, the
    reparametrisation has no funnel to non-centre, and NeuTra NUTS certifies an answer within
    0.1 sd and 10% of each alpha_j's quadrature moments (about 17 CPU s)."""
    script = load_script(DEFAULT_SCRIPTS / "lighthouses.py")
    ladder = fit_auto(script.model, script.load_data(), seed=0)
    assert ladder.answer is ladder.rungs[-1] and ladder.answer.rung == "nuts"
    assert ladder.verdict == "trustworthy", ladder.summary_sentence()
    rungs = {r.rung: [] for r in ladder.rungs}
    for r in ladder.rungs[:-1]:
        rungs[r.rung].append(r)
        assert not r.certified, r.record()
    for name in ("guide", "richer", "flow"):
        [r] = rungs[name]
        assert r.status == "done" and r.verdict == "not-trustworthy" and r.khat > 0.7, r.record()
    assert all(r.status == "skipped" and "k-hat" in r.stopped for r in rungs["psis"])
    assert "no location-scale latent site" in rungs["reparam"][0].stopped
    truth = script.module.posterior_moments()
    rows = {r["name"]: r for r in ladder.diagnosis.summary["parameters"]}
    assert set(rows) == set(truth)
    for name, (mean, sd) in truth.items():
        assert abs(rows[name]["mean"] - mean) <= 0.1 * sd, (name, rows[name], mean, sd)
        assert abs(rows[name]["sd"] / sd - 1) <= 0.1, (name, rows[name], mean, sd)
