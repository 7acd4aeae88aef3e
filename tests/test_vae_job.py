"""``ppl-models vae`` end to end: run contract, report rebuild, resume, and the error contract."""

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_models import cli, diagnostics, svi
from ppl_models.config import config_to_toml, load_config
from ppl_models.jobs.vae import report, train
from ppl_models.jobs.vae.config import VaeConfig
from ppl_models.runs import read_json, read_metrics

REPO = Path(__file__).resolve().parents[1]

CONTRACT = [
    "config.toml",
    "env.json",
    "metrics.jsonl",
    "summary.json",
    "posterior.nc",
    "report.html",
    "checkpoint.pt",
    "evaluation.npz",
]
FIGURES = [
    "training.png",
    "reconstructions.png",
    "prior_samples.png",
    "interpolation.png",
    "khat.png",
]


def tiny(synthetic_mnist, out, *extra):
    """A run of seconds: the MLP config on 256 training images, K up to 100 on 8 images."""
    return [
        "vae",
        "--config",
        str(REPO / "runs" / "vae_mnist_mlp.toml"),
        "--data-dir",
        str(synthetic_mnist),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--set",
        "max_train_images=256",
        "--set",
        "eval_images=64",
        "--set",
        "iw_images=8",
        "--set",
        "iw_ks=1,10,100",
        "--set",
        "posterior_draws=12",
        *extra,
    ]


def elbos(run_dir):
    return [(m["epoch"], m["train_elbo"], m["heldout_elbo"]) for m in read_metrics(run_dir)]


def test_run_writes_the_contract_and_the_report_rebuilds(synthetic_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    # the grid section of latent dimension 2 has tests of its own (tests/test_vae_grid.py)
    assert cli.main(tiny(synthetic_mnist, run, "--latent-dim", "2", "--set", "grid_images=0")) == 0
    assert "report:" in capsys.readouterr().out
    for name in CONTRACT:
        assert (run / name).is_file(), name
    for name in [*FIGURES, "latent_map.png"]:  # latent dimension 2 adds the latent map
        assert (run / "figures" / name).is_file(), name

    s = read_json(run / "summary.json")
    assert s["status"] == "complete" and s["model"] == "vae"
    assert (s["train_images"], s["heldout_images"], s["eval_images"]) == (256, 200, 64)
    assert "official split: 1,000 training images" in s["data_split"]
    assert s["epochs"] == 2 and s["device"] == "cpu" and s["latent_dim"] == 2
    assert list(s["iw_bounds"]) == ["1", "10", "100"]
    assert s["log_likelihood"] == s["iw_bounds"]["100"]
    assert 0 <= s["active_units"] <= 2 and 0 <= s["khat_share_bad"] <= 1
    for key in ("heldout_elbo", "seconds_per_epoch", "khat_threshold"):
        assert np.isfinite(s[key]), key

    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert {"train_elbo", "heldout_elbo", "seconds", "images_per_second"} <= set(metrics[0])

    idata = diagnostics.load(run / "posterior.nc")
    assert idata.posterior["z"].shape == (1, 12, 8, 2)  # chain, draw, image, latent
    stats = idata.sample_stats
    log_w = stats["log_joint"].values[0] - stats["log_q"].values[0]
    # the kept draws are the first 12 of the 100 per image that the K = 1 bound averages
    assert log_w.shape == (12, 8)
    assert abs(log_w.mean() - s["iw_bounds"]["1"]) < 6 * log_w.std() / np.sqrt(log_w.size)

    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6
    # every ELBO beside an IW bound is on the same images, and says how many
    assert "ELBO, the first 8 of them" in html and "IW bound, K = 10 (8 images)" in html
    assert "held-out ELBO" in html and "k-hat" in html

    (run / "report.html").unlink()
    for png in (run / "figures").glob("*.png"):
        png.unlink()
    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").read_text().count("data:image/png;base64,") == 6
    assert len(list((run / "figures").glob("*.png"))) == 6


def test_k1_bound_is_the_elbo_of_the_same_images(synthetic_mnist, tmp_path):
    run = tmp_path / "run"
    assert cli.main(tiny(synthetic_mnist, run, "--set", "iw_images=32")) == 0
    s = read_json(run / "summary.json")
    evaluation = np.load(run / "evaluation.npz")
    one_draw = evaluation["elbo"][:32]  # the one-draw ELBO of the IW images
    assert s["iw_elbo"] == pytest.approx(one_draw.mean())
    # K = 1 averages 100 draws per image of the same images: equal up to Monte Carlo error.
    # The images are shared, so only the one draw's noise separates them; its per-image sd is
    # bounded by the spread of the one-draw ELBOs around the K = 1 bound.
    noise = np.sqrt(np.mean((one_draw - one_draw.mean()) ** 2) / 32)
    assert abs(s["iw_elbo"] - s["iw_bounds"]["1"]) < 4 * noise
    # the IW bounds are not below the ELBO of their images (beyond Monte Carlo error)
    assert s["log_likelihood"] >= s["iw_bounds"]["1"] - 4 * s["iw_gains_se"]["10"]
    assert f"on the first 32 of those images, the ELBO is {s['iw_bounds']['1']:.2f}" in " ".join(
        report.verdict(s)
    ).replace("On the", "on the")


def test_resume_reproduces_an_uninterrupted_run_exactly(synthetic_mnist, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    assert cli.main(tiny(synthetic_mnist, straight)) == 0

    # interrupted right after the first epoch's checkpoint
    real_save = train.save_checkpoint

    def save_then_stop(path, loss_fn, optimizer, epoch, config, **kwargs):
        real_save(path, loss_fn, optimizer, epoch, config, **kwargs)
        raise KeyboardInterrupt

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
    assert cli.main(tiny(synthetic_mnist, interrupted)) == 130
    monkeypatch.undo()
    assert read_json(interrupted / "summary.json")["status"] == "failed"
    assert len(read_metrics(interrupted)) == 1
    assert cli.main(["vae", "--resume", str(interrupted), "--quiet"]) == 0

    # finished after one epoch, then extended to two
    extended = tmp_path / "extended"
    assert cli.main(tiny(synthetic_mnist, extended, "--epochs", "1")) == 0
    assert cli.main(["vae", "--resume", str(extended), "--epochs", "2", "--quiet"]) == 0

    expected = elbos(straight)
    assert len(expected) == 2
    for run in (interrupted, extended):
        assert elbos(run) == expected  # exactly, not approximately
        assert (
            read_json(run / "summary.json")["iw_bounds"]
            == read_json(straight / "summary.json")["iw_bounds"]
        )
    assert "epochs = 2" in (extended / "config.toml").read_text()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "0.1"], "only --epochs may change, got lr"),
        (["--epochs", "2"], "already finished its 2 epochs"),
        (["--epochs", "1"], "has 2 epochs, more than the 1"),
    ],
)
def test_resume_refuses_changes_and_finished_runs(
    synthetic_mnist, tmp_path, capsys, extra, message
):
    run = tmp_path / "run"
    assert cli.main(tiny(synthetic_mnist, run)) == 0
    capsys.readouterr()
    assert cli.main(["vae", "--resume", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "config.toml").write_text(config_to_toml(VaeConfig()))
    assert cli.main(["vae", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nonfinite_loss_fails_the_run_with_exit_2(synthetic_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(tiny(synthetic_mnist, run, "--lr", "1e30")) == 2
    err = capsys.readouterr().err
    assert "loss became" in err and len(err.strip().splitlines()) == 1
    summary = read_json(run / "summary.json")
    assert summary["status"] == "failed" and "NonFiniteLossError" in summary["error"]
    assert not (run / "checkpoint.pt").exists()  # the first epoch never finished


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nonfinite_loss_keeps_the_last_good_checkpoint(synthetic_mnist, tmp_path, monkeypatch):
    real_train = svi.train
    calls = []

    def poison_second_epoch(loss_fn, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                for p in loss_fn.parameters():
                    p.fill_(float("nan"))
        return real_train(loss_fn, *args, **kwargs)

    monkeypatch.setattr(svi, "train", poison_second_epoch)
    run = tmp_path / "run"
    assert cli.main(tiny(synthetic_mnist, run)) == 2
    assert read_json(run / "summary.json")["status"] == "failed"
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["networks"].values())
    assert [m["epoch"] for m in read_metrics(run)] == [1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "iw_ks=10,100"], "iw_ks must be comma-separated increasing integers from 1"),
        (["--set", "particles=0"], "particles must be an integer >= 1, got 0"),
        (["--set", "colour=blue"], "unknown config key 'colour'"),
        (["--set", "iw_images=100"], "iw_images (100) must not exceed the 64"),
        (["--set", "max_train_images=9000"], "max_train_images is 9000 but"),
        (["--set", "bf16=true"], "bf16 autocast is for CUDA"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(
    synthetic_mnist, tmp_path, capsys, extra, message
):
    assert cli.main(tiny(synthetic_mnist, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing is created for a run that cannot start


def test_missing_data_without_download(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PPL_MODELS_DATA", raising=False)
    empty = tmp_path / "empty"
    assert cli.main(["vae", "--data-dir", str(empty), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert str(empty / "MNIST" / "raw") in err and "--download" in err


def test_wrong_image_shape_is_exit_2(tmp_path, capsys):
    from test_vae_data import fake_split

    fake_split(tmp_path / "MNIST" / "raw", "t10k", 9000, shape=(32, 32))
    assert cli.main(["vae", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "expected (28, 28)" in capsys.readouterr().err


def test_config_files_load_and_describe_every_key():
    for name in ("vae_mnist_conv", "vae_mnist_mlp", "vae_mnist_latent2"):
        path = REPO / "runs" / f"{name}.toml"
        config = load_config(VaeConfig, path)
        keys = [
            line.split("=")[0].strip()
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")
        ]
        assert keys == [f.name for f in dataclasses.fields(VaeConfig)]
        assert all(
            "#" in line
            for line in path.read_text().splitlines()
            if line and not line.startswith("#")
        )
        assert config.ks == [1, 10, 100, 1000, 5000]
    assert load_config(VaeConfig, REPO / "runs" / "vae_mnist_conv.toml") == VaeConfig()
    mlp = load_config(VaeConfig, REPO / "runs" / "vae_mnist_mlp.toml")
    assert (mlp.arch, mlp.likelihood, mlp.latent_dim, mlp.hidden_dim) == (
        "mlp",
        "bernoulli",
        50,
        400,
    )


def test_checkpoint_rng_state_round_trips():
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002  (the legacy global state is what the checkpoint holds)
    state = train.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    train.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert first[2] == again[2]


@pytest.mark.cuda
def test_cuda_run_with_bf16(synthetic_mnist, tmp_path):
    run = tmp_path / "run"
    args = tiny(synthetic_mnist, run, "--set", "bf16=true")
    args[args.index("--device") + 1] = "cuda"
    assert cli.main(args) == 0
    s = read_json(run / "summary.json")
    assert s["device"].startswith("cuda") and s["bf16"] is True
    assert np.isfinite(s["heldout_elbo"])
    assert cli.main(["vae", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]


def test_the_first_screen_reads_collapse_and_k_hat_into_a_badge_and_steps():
    from ppl_models.jobs.vae import report

    s = {
        "khat_share_bad": 0.0, "khat_threshold": 0.7, "khat_median": 0.3, "active_units": 10,
        "latent_dim": 10, "likelihood": "bernoulli", "epochs": 30, "train_images": 60000,
        "heldout_images": 10000, "iw_images": 100, "iw_gains": {"10": 2.0},
        "iw_gains_se": {"10": 0.1},
    }  # fmt: skip
    assert report.badge(s).label == "TRUSTWORTHY" and report.badge(s).level == "good"
    assert report.next_steps(s)[0].startswith("Nothing to fix")
    partly = s | {"khat_share_bad": 0.2}
    assert report.badge(partly).level == "warn" and "20%" in report.badge(partly).why
    assert any("`--epochs 60`" in step for step in report.next_steps(partly))
    collapsed = s | {"active_units": 0, "likelihood": "normal", "train_images": 256}
    assert report.badge(collapsed).label == "POSTERIOR COLLAPSE"
    steps = report.next_steps(collapsed)
    assert "`--likelihood bernoulli`" in steps[0]
    assert any("max_train_images=0" in step for step in steps)
    shrinking = s | {"iw_gains": {"10": -1.0}}
    assert any("iw_images=200" in step for step in report.next_steps(shrinking))
