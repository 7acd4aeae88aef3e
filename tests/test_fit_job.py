"""``ppl-models fit``: the run directory, ``report``, every bad input as one line and exit 2,
and every shipped model script under small settings."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ppl_models import cli
from ppl_models.jobs.fit.config import FitConfig
from ppl_models.runs import read_json
from ppl_models.vi.script import posteriordb_dir

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"
SMALL = ["--steps", "60", "--particles", "4", "--draws", "500", "--quiet"]
# the fewest draws a run takes: a script whose enumerated model is scored one draw at a time
# (the HMM's forward pass per draw) would otherwise spend minutes on its diagnosis
FEWEST_DRAWS = ["--steps", "60", "--particles", "4", "--draws", "100", "--quiet"]
POSTERIORDB = {
    "eight_schools_noncentered.py": "eight_schools-eight_schools_noncentered",
    "eight_schools_centered.py": "eight_schools-eight_schools_centered",
    "kidiq_kidscore_momiq.py": "kidiq-kidscore_momiq",
    "sblri_blr.py": "sblri-blr",
}
MODEL = """
import pyro
import pyro.distributions as dist

def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

def data():
    return {"x": [0.5, 1.5, 1.0]}
"""


def run_cli(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def assert_one_line_error(code, err, pattern):
    import re

    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("ppl-models: error: ")
    assert re.search(pattern, lines[0]), lines[0]


def test_fit_writes_the_run_contract_and_report_rebuilds_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(
        ["fit", str(RUNS / "normal_mean.py"), "--out", str(out), *SMALL], capsys
    )
    assert code == 0
    for name in ("config.toml", "env.json", "metrics.jsonl", "summary.json", "posterior.nc"):
        assert (out / name).is_file(), name
    assert (out / "report.html").is_file() and any((out / "figures").glob("*.png"))
    summary = read_json(out / "summary.json")
    assert summary["status"] == "complete" and summary["model"] == "fit"
    assert summary["guide"] == "auto-normal" and summary["verdict"] in stdout
    assert summary["script"].endswith("normal_mean.py")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 60 and {"step", "loss", "lr"} <= set(metrics[0])
    config = (out / "config.toml").read_text()
    assert 'guide = "auto-normal"' in config and "steps = 60" in config
    (out / "report.html").unlink()
    code, stdout, _ = run_cli(["report", str(out)], capsys)
    assert code == 0 and (out / "report.html").is_file()


def test_model_raising_during_the_fit_marks_the_run_failed(tmp_path, capsys):
    script = write(
        tmp_path,
        "raises.py",
        MODEL.replace(
            '        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)',
            '        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)\n'
            "    if mu.dim() and mu.shape[0] == 4:  # the fit's 4 vectorized particles\n"
            "        raise RuntimeError('boom in the fit')",
        ),
    )
    out = tmp_path / "run"
    code, _, err = run_cli(["fit", str(script), "--out", str(out), *SMALL], capsys)
    assert_one_line_error(code, err, r"model raised during fitting: RuntimeError: boom in the fit")
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed" and "boom" in summary["error"]


def test_bad_inputs_end_in_one_line_and_exit_2(tmp_path, capsys):
    good = write(tmp_path, "good.py", MODEL)
    cases = [
        (["fit", str(tmp_path / "missing.py")], r"model script not found"),
        (
            ["fit", str(write(tmp_path, "broken.py", "raise ImportError('no such thing')\n"))],
            r"failed to import: ImportError: no such thing",
        ),
        (["fit", str(write(tmp_path, "nomodel.py", "x = 1\n"))], r"no callable `model`"),
    ]
    (tmp_path / "extra.json").write_text('{"x": [1.0], "z": 2}')
    cases.append(
        (["fit", str(good), "--data", str(tmp_path / "extra.json")], r"the key 'z' that model\(x\)")
    )
    (tmp_path / "nan.json").write_text('{"x": [1.0, NaN]}')
    cases.append((["fit", str(good), "--data", str(tmp_path / "nan.json")], r"'x' contains NaN"))
    (tmp_path / "corrupt.json.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    cases.append(
        (
            ["fit", str(good), "--reference", str(tmp_path / "corrupt.json.zip")],
            r"corrupt\.json\.zip",
        )
    )
    cases.append((["fit", str(good), "--set", "lr=-1"], r"lr must be a positive number"))
    cases.append((["fit", str(good), "--set", "bogus=1"], r"unknown config key 'bogus'"))
    cases.append(
        (["fit", str(good), "--set", "objective=jit"], r"objective must be one of plain, traced")
    )
    for args, pattern in cases:
        code, _, err = run_cli([*args, "--out", str(tmp_path / "out-never"), "--quiet"], capsys)
        assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "out-never").exists()  # bad input is caught before a run is created


def test_reference_names_matching_no_site(tmp_path, capsys):
    good = write(tmp_path, "good.py", MODEL)
    chains = [{"mu": [1.0] * 50, "nonexistent": [0.0] * 50}]
    with zipfile.ZipFile(tmp_path / "ref.json.zip", "w") as archive:
        archive.writestr("reference_draws.json", json.dumps(chains))
    code, _, err = run_cli(
        [
            "fit",
            str(good),
            "--reference",
            str(tmp_path / "ref.json.zip"),
            "--out",
            str(tmp_path / "r"),
            *SMALL,
        ],
        capsys,
    )
    assert_one_line_error(code, err, r"nonexistent")


def test_fit_config_validates_its_values():
    assert FitConfig().script == "runs/normal_mean.py"
    for key, value in [("steps", 0), ("particles", 0), ("guide", "auto-x"), ("draws", 10)]:
        with pytest.raises(ValueError, match=key):
            FitConfig(**{key: value})
    with pytest.raises(ValueError, match="lr_final"):
        FitConfig(lr=0.01, lr_final=0.1)
    assert FitConfig(reference="nuts").reference_kind == "nuts"
    assert FitConfig(reference="x.json.zip").reference_kind == "file"


def test_the_job_module_imports_neither_torch_nor_pyro():
    code = (
        "import sys, ppl_models, ppl_models.jobs.fit; "
        "print('torch' in sys.modules, 'pyro' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("script", sorted(p.name for p in RUNS.glob("*.py")))
def test_every_shipped_model_script_runs(script, tmp_path, capsys):
    if script in POSTERIORDB and not (posteriordb_dir() / POSTERIORDB[script]).is_dir():
        pytest.skip(f"posteriordb data not found under {posteriordb_dir()}")
    out = tmp_path / "run"
    code, _, err = run_cli(["fit", str(RUNS / script), "--out", str(out), *FEWEST_DRAWS], capsys)
    assert code == 0, err
    assert read_json(out / "summary.json")["status"] == "complete"


FAILING_ON_EVERY_RANK = """
import pyro
import pyro.distributions as dist

DATA_PLATE = "obs"

def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    if not hasattr(mu, "shape") or True:
        raise ValueError("the likelihood is not written yet")
    with pyro.plate("obs", len(x)) as i:
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x[i])

def data():
    return {"x": [0.5, 1.5, 1.0, 2.0]}
"""


def test_a_failing_nproc_job_says_why_in_one_line(tmp_path, capfd):
    """Under torchrun every rank printed the error, and torchrun added its OMP_NUM_THREADS
    banner (which also preceded every successful --nproc run), a SIGTERM notice and a summary:
    9 lines. The command prints one: the error of the rank that failed first."""
    script = write(tmp_path, "failing.py", FAILING_ON_EVERY_RANK)
    out = tmp_path / "run"
    code = cli.main(["fit", str(script), "--nproc", "2", "--out", str(out), *SMALL])
    err = capfd.readouterr().err
    assert_one_line_error(code, err, r"not written yet")
    assert "OMP_NUM_THREADS" not in err and "torchrun" not in err
    summary = read_json(out / "summary.json")
    assert summary["status"] == "failed" and "not written yet" in summary["error"]


UNBATCHED = """
import pyro, pyro.distributions as dist, torch
def model(y):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(5), 1.0))  # batch (5,), no plate
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(theta.sum(-1, keepdim=True), 1.0), obs=y)
def data():
    return {"y": [1.0, 0.5, 2.0]}
"""
NUMPY_SIMULATOR = """
import numpy as np, pyro, pyro.distributions as dist, torch
def model(y):
    g = pyro.sample("g", dist.Uniform(1.0, 20.0))
    height = float(np.floor(g.numpy() * 3.0))  # a piecewise-constant simulator in NumPy
    pyro.sample("y", dist.Normal(torch.tensor(height), 1.0), obs=torch.tensor(y))
def data():
    return {"y": 30.0}
"""
GUIDE_MISSING_SITE = """
import pyro, pyro.distributions as dist, torch
from pyro.distributions import constraints
def model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, s), obs=x)
def guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("mu", dist.Normal(loc, 1.0))  # s is left out
def data():
    return {"x": [0.5, 1.5, 1.0]}
"""


@pytest.mark.parametrize(
    ("script", "guide", "pattern"),
    [
        (UNBATCHED, "auto-normal", r'at site "theta", invalid log_prob shape; Expected \[\], '),
        (NUMPY_SIMULATOR, "auto-normal", r"not differentiable .*compute the model with torch"),
        (GUIDE_MISSING_SITE, "custom", r"no value for the model's latent sites \['s'\]"),
    ],
)
def test_a_broken_model_ends_in_one_line_that_keeps_pyros_hint(
    tmp_path, capsys, script, guide, pattern
):
    path = write(tmp_path, "broken_model.py", script)
    out = tmp_path / "run"
    code, _, err = run_cli(["fit", str(path), "--guide", guide, "--out", str(out), *SMALL], capsys)
    assert_one_line_error(code, err, pattern)
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*"))  # nothing half-written
