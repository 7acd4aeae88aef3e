"""``ppl-models bench vae``: the three steps compute the same loss, and bench.json is written."""

import math

import pytest
import torch

from ppl_models import cli
from ppl_models.bench import vae as bench
from ppl_models.runs import read_json
from ppl_models.svi import make_elbo, make_objective
from ppl_models.vae.model import build_vae, observations
from ppl_models.vae.networks import build_networks
from ppl_models.vae.options import LIKELIHOODS


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_handwritten_step_is_the_same_loss_as_the_package_step(likelihood):
    model, guide = build_vae(*build_networks("conv", 32), 32, likelihood)
    x = observations(torch.rand(5, 1, 28, 28), likelihood)
    torch.manual_seed(4)
    package = make_objective(model, guide, make_elbo("trace"))(x)
    torch.manual_seed(4)
    handwritten = bench.handwritten_loss(model, guide, x)
    torch.testing.assert_close(handwritten, package, rtol=1e-5, atol=1e-3)


def test_bench_writes_a_table_and_json(synthetic_mnist, tmp_path, capsys):
    args = [
        "bench",
        "vae",
        "--device",
        "cpu",
        "--arch",
        "mlp",
        "--likelihood",
        "bernoulli",
        "--latent-dim",
        "50",
        "--batch-sizes",
        "16,32",
        "--steps",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--epoch-images",
        "300",
        "--full-epoch",
        "--objective",
        "traced",
        "--data-dir",
        str(synthetic_mnist),
        "--out",
        str(tmp_path),
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "(a)/(b)" in out and "one epoch of 300 images" in out
    result = read_json(tmp_path / "bench.json")
    assert result["benchmark"] == "vae" and result["device"] == "cpu"
    assert result["objective"] == "traced" and "traced objective" in out
    assert [r["batch_size"] for r in result["rows"]] == [16, 32]
    for row in result["rows"]:
        a, b, c = (row[f"{k}_images_per_s"] for k in ("package", "handwritten", "dataloader"))
        assert min(a, b, c) > 0
        assert math.isclose(row["time_package_over_handwritten"], b / a)
        assert math.isclose(row["time_dataloader_over_package"], a / c)
    assert result["epoch"]["measured"] and result["epoch"]["seconds"] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-sizes", "0,256"], "--batch-sizes must be comma-separated positive integers"),
        (["--steps", "0"], "need --steps >= 1"),
        (["--repeats", "0"], "--repeats >= 1"),
    ],
)
def test_bench_bad_arguments(tmp_path, capsys, extra, message):
    assert cli.main(["bench", "vae", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
