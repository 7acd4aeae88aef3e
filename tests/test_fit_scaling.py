"""``ppl-models bench fit --scaling``: end to end on tiny sizes it writes every column of its
table and bench.json (timings are never asserted), its log-log slopes and its alternating
ratio of medians agree with closed forms and known numbers,
NumPyro's timings have their documented shape, the baselines are reported when the package's run
fails and NumPyro's absence is a row's note, not an error, and bad flags are one-line errors."""

import math

import pytest

from ppl_models import cli
from ppl_models.bench import fit_scaling as scaling
from ppl_models.bench.posteriors import DEFAULT_SCRIPTS
from ppl_models.jobs.fit.config import FitConfig
from ppl_models.runs import read_json
from ppl_models.vi.script import load_script

PACKAGE_COLUMNS = (
    "total",
    "total_cpu",
    "fit",
    "fit_cpu",
    "fit_init",
    "fit_steps",
    "fit_other",
    "steps",
    "step_ms",
    "diagnose",
    "diagnose_draws",
    "diagnose_weights_and_bounds",
    "diagnose_compare",
    "diagnose_mode_search",
    "report_and_files",
    "report_and_files_cpu",
    "draws",
    "draws_reason",
    "verdict",
    "peak_rss_fit",
    "peak_rss_diagnosis",
    "peak_rss",
)


def test_scaling_mode_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "fit", "--scaling", "--groups", "4", "--per-group", "3", "--steps", "12"]
    args += ["--particles", "2", "--draws", "100", "--no-numpyro", "--threads", "1"]
    args += ["--alternate-rounds", "2", "--alternate-steps", "3", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    # every part of the run and every peer has its column, each header printed once
    assert lines.count(scaling._line([c for c, _ in scaling.TIME_COLUMNS], scaling.TIME_COLUMNS))
    assert lines.count(scaling._line([c for c, _ in scaling.PEER_COLUMNS], scaling.PEER_COLUMNS))
    assert "skipped: --no-numpyro" in printed and "log-log slopes" in printed
    result = read_json(out / "bench.json")
    assert result["benchmark"] == "fit-scaling" and result["device"] == "cpu"
    assert result["settings"] == {"steps": 12, "particles": 2, "lr": FitConfig().lr, "draws": 100}
    [row] = result["rows"]
    assert (row["groups"], row["per_group"], row["d"], row["N"]) == (4, 3, 7, 12)
    assert "failed" not in row and row["stage"] == "done" and row["torch_threads"] == 1
    p = row["package"]
    assert set(PACKAGE_COLUMNS) <= set(p)
    assert p["steps"] <= 12 and p["draws"] == 100 and isinstance(p["draws_reason"], str)
    assert p["fit_steps"] > 0 and p["diagnose"] >= p["diagnose_draws"] >= 0
    # the child's own peak, as the kernel counted it, holds the run's
    assert 0 < p["peak_rss_fit"] <= p["peak_rss"] <= row["process_peak_rss"]
    assert len(row["load_before"]) == 3 and len(row["load_after"]) == 3
    pyro = row["plain_pyro"]
    assert pyro["guide"] == "AutoNormal" and pyro["dtype"] == "float64" and pyro["steps"] == 12
    assert row["step_over_pyro"] == pytest.approx(p["step_ms"] / pyro["step_ms"])
    cpu_ratio = (p["fit_steps_cpu"] / p["steps"]) / (pyro["cpu_seconds"] / pyro["steps"])
    assert row["step_over_pyro_cpu"] == pytest.approx(cpu_ratio)
    assert p["report_and_files_cpu"] == pytest.approx(
        p["total_cpu"] - p["fit_cpu"] - p["diagnose_cpu"]
    )
    assert row["numpyro_svi"] == {"skipped": "--no-numpyro"}
    assert row["step_over_numpyro"] is None and row["run_over_nuts"] is None
    # the steps timed in turns: two rounds, each side first once, the first step of each not timed
    alt = row["alternating"]
    assert alt["steps"] == 3 and [r["first"] for r in alt["rounds"]] == ["package", "pyro"]
    for r in alt["rounds"]:
        assert r["pyro"]["steps"] == 2 and r["pyro"]["loops"] == 1
        assert r["package"]["steps"] == 2 * r["package"]["loops"]  # a refit is a second loop
    assert row["step_over_pyro_alternating"] == pytest.approx(alt["package_ms"] / alt["pyro_ms"])
    assert row["step_over_pyro_alternating_cpu"] == alt["ratio_cpu"]
    assert result["alternate"] == {"rounds": 2, "steps": 3}
    assert "J = 4: alternating, 2 rounds of 3 steps" in printed
    [step] = [t for t in result["targets"] if t["name"] == "fit_step_over_pyro"]
    assert step["measured"] == row["step_over_pyro_alternating"] and step["basis"] == "alternating"
    assert set(result["slopes"]) >= {"total", "fit_steps", "diagnose", "peak_rss"}
    assert result["slopes"]["total"]["d"] is None  # one size: no slope
    assert [t["name"] for t in result["targets"]] == list(scaling.TARGETS)
    assert "J1000_run_seconds_idle" in printed and "not measured" in printed


def test_loglog_slope_against_closed_forms():
    d = [103, 1003, 10003]
    assert scaling.loglog_slope(d, [3.0 * x**1.7 for x in d]) == pytest.approx(1.7, abs=1e-12)
    # noisy: the least-squares slope written out by hand for three points
    x, y = [10.0, 100.0, 1000.0], [2.0, 30.0, 150.0]
    u, v = [math.log(a) for a in x], [math.log(b) for b in y]
    ub, vb = sum(u) / 3, sum(v) / 3
    expected = sum((a - ub) * (b - vb) for a, b in zip(u, v, strict=True)) / sum(
        (a - ub) ** 2 for a in u
    )
    # equal spacing in log x: the slope is (v3 - v1) / (u3 - u1)
    assert expected == pytest.approx((v[2] - v[0]) / (u[2] - u[0]))
    assert scaling.loglog_slope(x, y) == pytest.approx(expected, rel=1e-12)
    assert scaling.loglog_slope([5.0, 5.0], [1.0, 2.0]) is None  # one distinct size
    assert scaling.loglog_slope([5.0, 50.0], [1.0, None]) is None  # a size that failed


def test_joint_slopes_separate_d_and_n():
    sizes = [(100, 2000), (1000, 20000), (1000, 100000), (10000, 200000)]
    d, n = [a for a, _ in sizes], [b for _, b in sizes]
    t = [0.5 * a**1.2 * b**0.4 for a, b in sizes]
    joint = scaling.loglog_joint(d, n, t)
    assert joint["d"] == pytest.approx(1.2, abs=1e-9) and joint["N"] == pytest.approx(0.4, abs=1e-9)
    # N = 20 J: d and N move together, the joint fit is not identified
    assert scaling.loglog_joint([100, 1000, 10000], [2000, 20000, 200000], [1, 2, 3]) is None
    rows = [{"d": a, "N": b, "package": {"total": y}} for a, b, y in zip(d, n, t, strict=True)]
    rows.append({"d": 50, "N": 10, "package": None})  # a size that failed is left out
    result = scaling.slopes(rows)["total"]
    assert result["joint"]["d"] == pytest.approx(1.2, abs=1e-9)
    assert result["d"] == pytest.approx(scaling.loglog_slope(d, t))


def test_step_times_leave_each_loops_first_step_out():
    # (step, wall, cpu) after each step; the step index falling back to 0 starts a refit's loop
    stamps = [(0, 10.0, 5.0), (1, 10.5, 5.25), (2, 11.0, 5.5), (0, 20.0, 9.0), (1, 20.5, 9.25)]
    times = scaling.step_times(stamps)
    assert times["steps"] == 3 and times["loops"] == 2  # 2 + 1 steps after each loop's first
    assert times["seconds"] == pytest.approx(1.5) and times["cpu_seconds"] == pytest.approx(0.75)
    assert times["step_ms"] == pytest.approx(500.0) and times["step_cpu_ms"] == pytest.approx(250.0)
    assert scaling.step_times([(0, 1.0, 1.0)])["step_ms"] is None  # one step: nothing timed


def test_alternating_ratio_is_the_ratio_of_the_medians():
    def side(ms, cpu_ms):
        return {"step_ms": ms, "step_cpu_ms": cpu_ms}

    package = [(16.0, 15.0), (30.0, 16.0), (17.0, 15.5), (18.0, 14.0)]
    pyro = [(15.0, 14.0), (16.0, 15.0), (40.0, 16.5), (15.5, 15.0)]
    rounds = [
        {"first": first, "package": side(*a), "pyro": side(*b)}
        for first, a, b in zip(["package", "pyro"] * 2, package, pyro, strict=True)
    ]
    summary = scaling.alternating_summary(rounds)
    # medians of four: the mean of the middle two, so one slow round on either side weighs little
    assert summary["package_ms"] == 17.5 and summary["pyro_ms"] == 15.75
    assert summary["ratio"] == pytest.approx(17.5 / 15.75)
    assert summary["package_cpu_ms"] == 15.25 and summary["pyro_cpu_ms"] == 15.0
    assert summary["ratio_cpu"] == pytest.approx(15.25 / 15.0)
    assert summary["round_ratios"] == pytest.approx([16 / 15, 30 / 16, 17 / 40, 18 / 15.5])
    assert summary["rounds"] is rounds
    rounds[0]["pyro"] = side(None, None)  # a side with no timed step
    summary = scaling.alternating_summary(rounds)
    assert summary["pyro_ms"] == 16.0 and summary["round_ratios"][0] is None


def test_alternate_flags_parse_into_the_sizes_spec(tmp_path):
    def checked(*extra):
        args = cli.build_parser().parse_args(["bench", "fit", "--scaling", *extra])
        return scaling.check_args(args)["alternate"]

    assert checked() == {"rounds": scaling.ALTERNATE_ROUNDS, "steps": None}  # on by default
    assert checked("--alternate-rounds", "5", "--alternate-steps", "80") == {
        "rounds": 5,
        "steps": 80,
    }
    assert checked("--alternate-rounds", "0") is None  # off: the back-to-back ratio only


def test_targets_are_checked_against_their_sizes():
    gb = 10**9
    rows = [
        {"groups": 100, "N": 2000, "package": {"total": 9.0}, "step_over_pyro": 1.5},
        {
            "groups": 1000,
            "N": 20000,
            "package": {"total": 40.0, "peak_rss": 2 * gb, "fit": 20.0, "diagnose": 10.0},
            "run_over_nuts": 2.0,
            "step_over_pyro": 1.1,
        },
        {"groups": 10000, "N": 200000, "package": None, "failed": "stopped"},
    ]
    checked = {t["name"]: t for t in scaling.against_targets(rows)}
    assert set(checked) == set(scaling.TARGETS)
    assert checked["J1000_run_seconds_idle"] == {
        "name": "J1000_run_seconds_idle",
        "target": 45.0,
        "measured": 40.0,
        "met": True,
    }
    assert checked["J1000_run_over_nuts"]["met"] is True
    assert checked["J1000_peak_gb"]["measured"] == 2.0 and checked["J1000_peak_gb"]["met"] is False
    assert checked["J1000_diagnose_over_fit"]["measured"] == 0.5
    # the worst size's ratio counts
    assert checked["fit_step_over_pyro"]["measured"] == 1.5
    assert checked["fit_step_over_pyro"]["met"] is False
    assert checked["fit_step_over_pyro"]["basis"] == "back to back"
    # the ratio timed in turns replaces a size's back-to-back one where it was measured
    rows[0]["step_over_pyro_alternating"] = 1.05
    step = {t["name"]: t for t in scaling.against_targets(rows)}["fit_step_over_pyro"]
    assert step["measured"] == 1.1 and step["met"] is True
    assert step["basis"] == "J = 100: alternating, J = 1,000: back to back"
    # a size that did not finish is not measured, neither met nor missed
    assert checked["J10000_run_seconds"]["measured"] is None
    assert checked["J10000_peak_gb"]["met"] is None


@pytest.mark.skipif(not scaling.numpyro_available(), reason="NumPyro is not installed")
def test_numpyro_timings_have_their_shape():
    data = load_script(DEFAULT_SCRIPTS / scaling.SCRIPT).module.simulate(3, 4, 0)
    svi = scaling.time_numpyro_svi(data, steps=3, particles=2, lr=0.05)
    assert svi["steps"] == 3 and svi["step_ms"] > 0 and svi["run_seconds"] > 0
    assert math.isfinite(svi["final_loss"]) and svi["dtype"] == "float32"
    nuts = scaling.time_numpyro_nuts(data, warmup=3, draws=4, chains=1)
    assert nuts["chains"] == 1 and nuts["chain_method"] == "sequential"
    assert nuts["seconds"] > 0 and nuts["max_rhat"] is None and nuts["divergences"] >= 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--groups", "100,x"], "--groups must be distinct positive integers"),
        (["--groups", "0"], "--groups must be distinct positive integers"),
        (["--per-group", "20,20"], "--per-group must be distinct positive integers"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--timeout", "-1"], "--timeout must be a positive number"),
        (["--memory-limit", "0"], "--memory-limit must be a positive number"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--nuts-chains", "0"], "--nuts-chains >= 1"),
        (["--alternate-rounds", "-1"], "--alternate-rounds must be >= 0"),
        (["--alternate-steps", "1"], "--alternate-steps must be >= 2"),
        (["--set", "nope=1"], "unknown config key 'nope'"),
        (["--set", "batch_size=-5"], "batch_size must be"),
        (["--set", "data=x.json"], "--set data is fixed by the scaling benchmark"),
        (["--set", "steps"], "--set expects key=value"),
    ],
)
def test_scaling_bad_flags_are_one_line_errors(extra, message, tmp_path, capsys):
    assert cli.main(["bench", "fit", "--scaling", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bench.json").exists()


def test_a_size_past_its_limits_is_stopped_and_said_so():
    import subprocess
    import sys

    hold = "x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]); import time; "
    child = subprocess.Popen([sys.executable, "-c", hold + "time.sleep(60)"])
    status, usage, fate = scaling._wait(child, timeout=50, memory_limit=100 * 2**20)
    assert "--memory-limit of 0.0977 GB" in fate and status != 0
    assert usage.ru_maxrss * 1024 > 100 * 2**20  # the child's own peak, from wait4
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    status, _, fate = scaling._wait(child, timeout=0.5, memory_limit=None)
    assert fate == "stopped after the --timeout of 0.5 s" and status != 0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert scaling._wait(child, timeout=50, memory_limit=2**40)[2] is None


def test_a_failed_package_run_is_a_row_and_the_baselines_still_run(tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "fit", "--scaling", "--groups", "3", "--per-group", "2", "--steps", "4"]
    args += ["--particles", "2", "--draws", "100", "--no-numpyro", "--set", "guide=custom"]
    assert cli.main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the package's run failed: ValueError: --guide custom needs a guide" in printed
    [row] = read_json(out / "bench.json")["rows"]
    assert row["package"] is None and "Traceback" in row["package_traceback"]
    assert row["plain_pyro"]["step_ms"] > 0 and row["step_over_pyro"] is None
    # on by default, the alternating comparison has no package to time: said, not a crash
    assert row["alternating"] == {"skipped": "the package's run or plain Pyro failed"}
    assert row["step_over_pyro_alternating"] is None


def test_without_numpyro_its_columns_say_so_and_the_rest_is_measured(monkeypatch, capsys):
    monkeypatch.setattr(scaling, "numpyro_available", lambda: False)  # no bench extra
    spec = {
        "groups": 3,
        "per_group": 2,
        "seed": 0,
        "script": str(DEFAULT_SCRIPTS / scaling.SCRIPT),
        "settings": {"steps": 4, "particles": 2, "lr": 0.05, "draws": 100},
        "overrides": {},
        "nuts": dict(scaling.NUTS_DEFAULTS),
        "numpyro": True,
        "threads": 1,
    }
    row = scaling.measure(spec)
    absent = {"skipped": "NumPyro is not installed (pip install 'ppl_models[bench]')"}
    assert row["numpyro_svi"] == absent and row["numpyro_nuts"] == absent
    assert row["stage"] == "done" and row["package"]["steps"] > 0
    assert row["plain_pyro"]["step_ms"] > 0 and row["step_over_pyro"] > 0
    assert row["step_over_numpyro"] is None and row["run_over_nuts"] is None
    result = {
        "script": spec["script"],
        "settings": spec["settings"],
        "overrides": {},
        "device_name": "cpu",
        "rows": [row],
        "slopes": scaling.slopes([row]),
        "targets": scaling.against_targets([row]),
    }
    scaling.print_tables(result)
    assert "J = 3: skipped: NumPyro is not installed" in capsys.readouterr().out
