"""``ppl-models runs`` (the runs at a glance) and ``ppl-models compare`` (one page of several
runs' verdicts and per-element errors), on run folders written here."""

import json
import re
from pathlib import Path

import pytest

from ppl_models import cli


def _row(name, mean, sd, ref_mean=None, ref_sd=None, psis_mean=None, psis_sd=None):
    row = {"name": name, "site": name.split("[")[0], "kind": "latent", "mean": mean, "sd": sd}
    row |= {"psis_mean": psis_mean, "psis_sd": psis_sd, "ref_mean": ref_mean, "ref_sd": ref_sd}
    if ref_mean is not None:
        row |= {"std_mean_error": (mean - ref_mean) / ref_sd, "sd_ratio": sd / ref_sd, "ks": 0.2}
    return row


def _run(root: Path, name: str, summary: dict, config: str, created: str) -> Path:
    run = root / name.split("/")[0] / name.split("/")[1]
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "config.toml").write_text(config)
    (run / "env.json").write_text(json.dumps({"created": created}))
    return run


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    centred = {
        "status": "complete", "model": "fit", "script": "runs/eight_schools_centered.py",
        "guide": "auto-normal", "verdict": "not-trustworthy", "fit_seconds": 6.1,
        "timings": {"total": 7.8}, "psis_khat": 0.87, "importance_ess": 153.0, "elbo": -33.92,
        "elbo_se": 0.004, "reference": "posteriordb",
        "parameters": [
            _row("mu", 1.98, 1.22, 4.41, 3.31, 2.6, 2.2),
            _row("tau", 4.01, 1.0, 3.6, 3.2, 3.7, 1.6),
        ],
    }  # fmt: skip
    mvn = centred | {"guide": "auto-mvn", "verdict": "means-only", "fit_seconds": 9.0}
    mvn["parameters"] = [_row("mu", 4.2, 3.0, 4.41, 3.31), _row("tau", 3.5, 2.6, 3.6, 3.2)]
    exp_normal = {
        "status": "complete", "model": "exp-normal", "guide": "gamma", "verdict": "trustworthy",
        "observations": {"count": 1000}, "fit_seconds": 58.3, "timings": {"total": 13.6},
        "parameters": [_row("z", 1.77, 0.03, 1.77, 0.03)],
    }  # fmt: skip
    failed = {"status": "failed", "error": "ValueError: the model has no latent variables"}
    _run(
        root,
        "eight_schools_centered/20261206-083600",
        centred,
        'script = "x.py"\n',
        "2026-12-06T08:36:00+0000",
    )
    _run(
        root,
        "eight_schools_centered/20261206-090000",
        mvn,
        'script = "x.py"\n',
        "2026-12-06T09:00:00+0000",
    )
    _run(
        root, "exp_normal/20261206-083100", exp_normal, "n_obs = 1000\n", "2026-12-06T08:31:00+0000"
    )
    _run(
        root,
        "nolatent/20261206-080600",
        failed,
        'script = "nolatent.py"\n',
        "2026-12-06T08:06:00+0000",
    )
    (root / "in_progress" / "20261206-100000").mkdir(parents=True)
    (root / "in_progress" / "20261206-100000" / "config.toml").write_text('script = "y.py"\n')
    return root


def test_runs_lists_time_job_model_guide_verdict_seconds(runs_root, capsys):
    assert cli.main(["runs", str(runs_root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["time", "job", "model", "guide", "verdict", "seconds", "run"]
    body = lines[1:]
    assert len(body) == 4  # the run in progress has no summary.json
    assert [re.match(r"\S+ \S+", line).group(0) for line in body] == sorted(
        re.match(r"\S+ \S+", line).group(0) for line in body
    )  # oldest first
    failed, exp_normal, centred, mvn = body
    assert "fit" in failed and "nolatent" in failed and "failed: ValueError" in failed
    assert "exp-normal (N 1000)" in exp_normal and "gamma" in exp_normal
    assert "trustworthy" in exp_normal and " 72 " in exp_normal  # 58.3 + 13.6 s
    assert "eight_schools_centered" in centred and "auto-normal" in centred
    assert "not-trustworthy" in centred and "14" in centred
    assert "means-only" in mvn and "eight_schools_centered/20261206-090000" in mvn
    assert cli.main(["runs", str(runs_root), "--all"]) == 0
    assert "no summary.json" in capsys.readouterr().out


def test_runs_of_an_empty_or_missing_folder(tmp_path, capsys):
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err


def test_compare_writes_one_page_of_verdicts_and_errors_side_by_side(runs_root, tmp_path, capsys):
    runs = sorted(runs_root.glob("*/2026*"))
    centred, mvn = (p for p in runs if "eight_schools" in str(p))
    exp_normal = next(p for p in runs if "exp_normal" in str(p))
    out = tmp_path / "comparison"
    assert cli.main(["compare", str(centred), str(mvn), str(exp_normal), "--out", str(out)]) == 0
    assert f"compare: {out / 'report.html'}" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    for verdict in ("not-trustworthy", "means-only", "trustworthy"):
        assert verdict in html
    table = html[html.index('id="elements"') :]
    table = table[: table.index("</table>")]
    assert "A: mean error" in table and "B: sd ratio" in table and "C: mean error" in table
    mu = table[table.index("<td>mu</td>") :].split("</tr>")[0]
    assert "-0.73" in mu and "-0.063" in mu  # (1.98 - 4.41) / 3.31, (4.2 - 4.41) / 3.31
    assert html.count("data:image/png;base64,") == 1  # the errors, per element and run
    assert str(centred.resolve()) in (out / "config.toml").read_text()


def test_compare_refuses_what_it_cannot_compare(runs_root, tmp_path, capsys):
    one = next(runs_root.glob("exp_normal/*"))
    failed = next(runs_root.glob("nolatent/*"))
    assert cli.main(["compare", str(one)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert cli.main(["compare", str(one), str(failed)]) == 2
    assert "did not complete" in capsys.readouterr().err
    assert cli.main(["compare", str(one), str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
