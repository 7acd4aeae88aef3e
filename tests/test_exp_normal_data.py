"""Simulating, validating and loading exponential-normal observations."""

import numpy as np
import pytest
import torch

from ppl_models import exp_normal as en


def test_simulate_reproduces_the_notebook():
    torch.manual_seed(0)
    sampled_z = torch.distributions.Exponential(1.0).sample()
    sampled_x = torch.distributions.Normal(sampled_z, 1.0).sample((5,))
    z, x = en.simulate(1, 5, 0)
    assert z == float(sampled_z)
    np.testing.assert_array_equal(x, sampled_x.double().numpy())
    assert x.dtype == np.float64 and x.shape == (5,)


def test_observation_validation_names_the_bad_row():
    with pytest.raises(ValueError, match="row 3 is not finite: nan"):
        en.validate_observations([1.0, 2.0, 3.0, float("nan"), 5.0])
    with pytest.raises(ValueError, match="row 0 is not finite: inf"):
        en.validate_observations(np.array([np.inf]))
    with pytest.raises(ValueError, match="empty"):
        en.validate_observations([])
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        en.validate_observations(np.zeros((2, 2)))
    np.testing.assert_array_equal(en.validate_observations(torch.ones(3, 1)), np.ones(3))


@pytest.mark.parametrize("rate", [-1.0, 0.0, float("nan"), float("inf"), "fast"])
def test_rate_must_be_positive_and_finite(rate):
    with pytest.raises(ValueError, match="rate must be a positive finite number, got"):
        en.validate_rate(rate)
    with pytest.raises(ValueError, match="rate must be a positive finite number"):
        en.log_evidence([1.0], rate)


def test_rate_error_names_the_value():
    with pytest.raises(ValueError, match=r"rate must be a positive finite number, got -1\.0$"):
        en.validate_rate(-1.0)


@pytest.mark.parametrize("suffix", [".csv", ".txt"])
def test_load_text_observations(tmp_path, suffix):
    path = tmp_path / f"obs{suffix}"
    path.write_text("1.5\n\n-2\n  3e-1 \n")
    np.testing.assert_array_equal(en.load_observations(path), [1.5, -2.0, 0.3])


def test_load_npy_observations(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(3.0))
    np.save(tmp_path / "column.npy", np.arange(3.0)[:, None])
    for name in ("flat.npy", "column.npy"):
        np.testing.assert_array_equal(en.load_observations(tmp_path / name), [0.0, 1.0, 2.0])


def test_load_rejects_a_non_numeric_row(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text("1.0\n2.0\n\nabc\n")
    with pytest.raises(ValueError, match="line 4 is not a finite number: 'abc'"):
        en.load_observations(path)
    path.write_text("1.0\nnan\n")
    with pytest.raises(ValueError, match="line 2 is not a finite number: 'nan'"):
        en.load_observations(path)


def test_load_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        en.load_observations(missing)
    other = tmp_path / "obs.json"
    other.write_text("[1]")
    with pytest.raises(ValueError, match=r"'\.json'.*\.csv, \.npy, \.txt"):
        en.load_observations(other)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no observations"):
        en.load_observations(empty)
