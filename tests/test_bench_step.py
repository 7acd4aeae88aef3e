"""``ppl-models bench step``: the table and bench.json of a tiny run (their shape, not timings)."""

import math

import pytest

from ppl_models import cli
from ppl_models.bench import step
from ppl_models.runs import read_json


def test_bench_step_writes_a_table_and_json(tmp_path, capsys):
    args = ["bench", "step", "--device", "cpu", "--steps", "2", "--repeats", "2", "--warmup", "1"]
    assert cli.main([*args, "--out", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    assert "MLP 784-16-2 VAE, batch 32" in out and "x hand-written" in out
    for label in step.LABELS.values():
        assert label in out
    result = read_json(tmp_path / "new" / "bench.json")
    assert result["benchmark"] == "step" and result["device"] == "cpu"
    assert (result["batch_size"], result["hidden_dim"], result["latent_dim"]) == (32, 16, 2)
    assert result["cpu_threads"] == 1 and result["traced_fallback"] is None
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == list(step.METHODS)
    hand = rows["handwritten"]["us_per_step"]
    for row in rows.values():
        assert len(row["us_rounds"]) == 2 and row["us_min"] <= row["us_per_step"]
        assert row["first_call_s"] > 0 and row["cpu_us_per_step"] > 0
        assert math.isclose(
            row["cpu_time_over_handwritten"],
            row["cpu_us_per_step"] / rows["handwritten"]["cpu_us_per_step"],
        )
        assert math.isclose(row["time_over_handwritten"], row["us_per_step"] / hand)
        assert math.isclose(
            row["us_beyond_networks"], row["us_per_step"] - rows["networks"]["us_per_step"]
        )
    assert math.isclose(
        result["time_traced_over_handwritten"], rows["traced"]["us_per_step"] / hand
    )
    assert math.isclose(result["time_plain_over_handwritten"], rows["plain"]["us_per_step"] / hand)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--batch-size", "0"], "need --batch-size to be >= 1"),
        (["--warmup", "-1"], "need --warmup and --threads to be >= 0"),
    ],
)
def test_bench_step_bad_arguments(tmp_path, capsys, extra, message):
    assert cli.main(["bench", "step", "--out", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err
