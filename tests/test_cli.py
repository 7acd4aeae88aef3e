"""The command line: ``--help`` is instant (no torch, no pyro), choices match the code's."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ppl_models import cli, svi
from ppl_models import exp_normal as exp_normal_model
from ppl_models.bench import exp_normal as bench_exp_normal
from ppl_models.jobs.exp_normal import config as exp_normal_job
from ppl_models.jobs.vae import config as vae_config
from ppl_models.jobs.vae import report as vae_report
from ppl_models.vae import evaluate
from ppl_models.vae.model import LIKELIHOODS
from ppl_models.vae.networks import ARCHS

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyro", "arviz", "matplotlib", "jinja2")

COMMANDS = [
    [],
    *([name] for name in cli.JOBS),
    ["report"],
    ["bench"],
    *(["bench", name] for name in cli.BENCHMARKS),
]


def _in_fresh_interpreter(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    return result.stdout


def test_building_the_parser_imports_neither_torch_nor_pyro():
    code = (
        "import json, sys\n"
        "from ppl_models import cli\n"
        "cli.build_parser()\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    assert json.loads(_in_fresh_interpreter(code)) == []


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ppl-models")
def test_every_help_is_fast_and_light(command):
    code = (
        "import contextlib, io, json, sys\n"
        "from ppl_models import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        f"        cli.main({[*command, '--help']!r})\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "print(json.dumps({'code': code, 'help': out.getvalue(), "
        f"'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    result = json.loads(_in_fresh_interpreter(code))
    assert result["code"] == 0 and "usage: ppl-models" in result["help"]
    assert result["heavy"] == []
    # speed is the absence of the heavy imports (they took 4.6-8.5 s); no timed assertion


def test_the_spelled_out_choices_are_the_codes():
    # the VAE job's config uses the very lists the code checks against: one definition each
    assert vae_config.ARCHS is ARCHS
    assert vae_config.LIKELIHOODS is LIKELIHOODS
    assert vae_config.ELBO_KINDS is svi.ELBO_KINDS is exp_normal_job.ELBO_KINDS
    assert vae_config.OBJECTIVE_KINDS is svi.OBJECTIVE_KINDS
    assert exp_normal_job.GUIDE_FAMILIES is exp_normal_model.GUIDE_FAMILIES
    assert bench_exp_normal.TOLERANCE is exp_normal_job.TOLERANCE
    assert vae_report.ACTIVE_THRESHOLD is evaluate.ACTIVE_THRESHOLD


def test_a_nonfinite_loss_is_a_floating_point_error():
    # the command line catches it by this base class, without importing svi
    assert issubclass(svi.NonFiniteLossError, FloatingPointError)


def test_bench_out_is_created_when_missing(tmp_path, capsys):
    out = tmp_path / "new" / "bench"
    args = ["bench", "exp-normal", "--repeats", "1", "--baseline-steps", "5", "--out", str(out)]
    assert cli.main(args) == 0
    assert json.loads((out / "bench.json").read_text())["benchmark"] == "exp-normal"
    assert "wrote" in capsys.readouterr().out


def test_bench_out_must_not_be_a_file(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    assert cli.main(["bench", "exp-normal", "--out", str(out)]) == 2
    assert "must be a folder" in capsys.readouterr().err


def _one_line_error(capsys, argv) -> str:
    """Run the command; it must fail with exit code 2 and exactly one line on stderr."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


def test_an_unknown_guide_is_one_line_naming_the_choices(capsys):
    # argparse would print its usage text (8 lines) before the message
    err = _one_line_error(capsys, ["fit", "runs/normal_mean.py", "--guide", "auto-foo"])
    assert "auto-foo" in err and "auto-normal" in err and "auto-mvn" in err
    assert err.startswith("ppl-models fit: error:") and "--help" in err
    err = _one_line_error(capsys, ["fit", "runs/normal_mean.py", "--steps", "many"])
    assert "--steps" in err and "many" in err
    err = _one_line_error(capsys, ["no-such-command"])
    assert "no-such-command" in err and "fit" in err


def test_report_of_a_missing_folder_says_not_found(tmp_path, capsys):
    err = _one_line_error(capsys, ["report", str(tmp_path / "no-such-run")])
    assert "not found" in err and "no-such-run" in err and "summary.json" not in err
    (tmp_path / "file").write_text("")
    assert "not a folder" in _one_line_error(capsys, ["report", str(tmp_path / "file")])
