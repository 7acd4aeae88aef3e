"""Reference draws: posteriordb files, InferenceData files, NUTS, and matching to sites."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_models import diagnostics
from ppl_models.vi.references import (
    Reference,
    load_reference,
    match_sites,
    nuts_reference,
)
from ppl_models.vi.script import posteriordb_dir

SHARED = posteriordb_dir()


def _chains(n_chains=2, n_draws=5):
    """posteriordb-style chains whose values encode (chain, draw, element) so the mapping of
    ``b[i,j]`` to element [i-1, j-1] can be read back."""
    chains = []
    for c in range(n_chains):
        chain = {"mu": [100 * c + d for d in range(n_draws)]}
        for i in range(1, 3):
            for j in range(1, 4):
                chain[f"b[{i},{j}]"] = [100 * c + d + i * 0.1 + j * 0.01 for d in range(n_draws)]
        chains.append(chain)
    return chains


def _write(path: Path, obj, zipped: bool):
    text = json.dumps(obj)
    if zipped:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("draws.json", text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("zipped", [False, True])
def test_posteriordb_names_map_one_based_to_elements(tmp_path, zipped):
    name = "ref.json.zip" if zipped else "ref.json"
    ref = load_reference(_write(tmp_path / name, _chains(), zipped))
    assert ref.draws["mu"].shape == (2, 5)
    b = ref.draws["b"]
    assert b.shape == (2, 5, 2, 3)
    # b[2,3] of chain 2, draw 4 is element [1, 2] of chain index 1, draw index 3
    assert b[1, 3, 1, 2] == pytest.approx(100 + 3 + 0.2 + 0.03)
    assert b[0, 0, 0, 0] == pytest.approx(0.11)
    assert "posteriordb" in ref.source


def test_corrupt_files_give_one_clear_error(tmp_path):
    bad_zip = tmp_path / "ref.json.zip"
    bad_zip.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match=r"ref\.json\.zip.*zip"):
        load_reference(bad_zip)
    bad_json = tmp_path / "ref.json"
    bad_json.write_text("[{'mu': [1, 2")
    with pytest.raises(ValueError, match=r"ref\.json is not valid JSON.*list of chains"):
        load_reference(bad_json)
    wrong_shape = _write(tmp_path / "dict.json", {"mu": [1, 2]}, False)
    with pytest.raises(ValueError, match="expected a list of chains"):
        load_reference(wrong_shape)
    missing = _chains()
    for chain in missing:
        del chain["b[1,2]"]
    with pytest.raises(ValueError, match=r"lacks b\[1,2\]"):
        load_reference(_write(tmp_path / "missing.json", missing, False))
    bad_nc = tmp_path / "ref.nc"
    bad_nc.write_bytes(b"\x89HDF garbage")
    with pytest.raises(ValueError, match=r"ref\.nc is not a readable ArviZ InferenceData"):
        load_reference(bad_nc)
    with pytest.raises(ValueError, match=r"must end in \.json, \.json\.zip or \.nc"):
        load_reference(_write(tmp_path / "ref.csv", [], False))
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_reference(tmp_path / "nothing.json")


def test_names_matching_no_site_name_both_lists():
    ref = Reference({"mu": np.zeros((1, 4)), "sigma_y": np.ones((1, 4))}, "test")
    with pytest.raises(ValueError) as err:
        match_sites(ref, {"mu": (), "sigma": ()})
    message = str(err.value)
    assert "sigma_y" in message and "reference names: mu, sigma_y" in message
    assert "model sites: mu, sigma" in message
    with pytest.raises(ValueError, match="shape"):
        match_sites(Reference({"mu": np.zeros((1, 4, 3))}, "t"), {"mu": (2,)})
    # sites without reference draws are fine; a (1,)-shaped site takes a scalar's draws
    matched = match_sites(Reference({"mu": np.zeros((1, 4))}, "t"), {"mu": (1,), "tau": ()})
    assert matched.draws["mu"].shape == (1, 4, 1)


def test_non_finite_reference_draws_are_a_corrupt_reference(tmp_path):
    chains = _chains()
    chains[1]["b[2,3]"][2] = float("nan")  # JSON's NaN token, which json.loads accepts
    ref = load_reference(_write(tmp_path / "nan.json", chains, zipped=False))
    with pytest.raises(ValueError, match=r"'b' hold 1 NaN or infinite values of 60"):
        match_sites(ref, {"mu": (), "b": (2, 3)})


def test_inference_data_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    beta = rng.normal(size=(2, 50, 3))
    idata = diagnostics.from_dict(posterior={"beta": beta, "tau": rng.gamma(2.0, size=(2, 50))})
    diagnostics.to_netcdf(idata, tmp_path / "ref.nc")
    ref = load_reference(tmp_path / "ref.nc")
    np.testing.assert_allclose(ref.draws["beta"], beta)
    assert ref.draws["tau"].shape == (2, 50)


def test_nuts_reference_recovers_a_conjugate_posterior_with_deterministic_sites():
    y = torch.tensor([1.0, 2.0, 0.5, 1.5])

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        pyro.deterministic("mu_plus_one", mu + 1)
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    ref = nuts_reference(model, {"y": y}, warmup=100, draws=200, chains=2, seed=1, jit=False)
    assert ref.draws["mu"].shape == (2, 200)
    post_var = 1 / (1 / 100 + 4)
    post_mean = post_var * float(y.sum())
    mu = ref.draws["mu"].ravel()
    assert abs(mu.mean() - post_mean) < 0.15
    assert abs(mu.std() - np.sqrt(post_var)) < 0.1
    np.testing.assert_allclose(ref.draws["mu_plus_one"], ref.draws["mu"] + 1, rtol=1e-6)
    assert "NUTS" in ref.source and "2 chain" in ref.source


def test_nuts_reference_starts_flat_priors_in_the_datas_float64():
    # ImproperUniform has no dtype of its own; float64 data once met a float32 start and failed.
    # The posterior is proper: y sees beta1 + beta2 and z sees beta1 - beta2, independent under
    # the flat prior. (With y alone, beta1 - beta2 was unidentified: every NUTS trajectory ran to
    # the maximum tree depth along it, and the test took 108-242 s.)
    y = torch.tensor([0.3, 1.1, 0.7, 1.9, 1.2], dtype=torch.float64)
    z = torch.tensor([-0.4, 0.2, 0.1, -0.8, 0.3], dtype=torch.float64)

    def model(y, z):
        shape = torch.Size([2])
        beta = pyro.sample("beta", dist.ImproperUniform(dist.constraints.real, (), shape))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(beta.sum(-1), 1.0), obs=y)
            pyro.sample("z", dist.Normal(beta[..., 0] - beta[..., 1], 1.0), obs=z)

    ref = nuts_reference(
        model,
        {"y": y, "z": z},
        warmup=100,
        draws=200,
        chains=1,
        seed=0,
        jit=False,
        max_plate_nesting=1,
    )
    total = ref.draws["beta"].sum(-1).ravel()  # flat prior: beta1 + beta2 ~ N(mean(y), 1/n)
    assert abs(total.mean() - float(y.mean())) < 0.2
    assert abs(total.std() - (1 / len(y)) ** 0.5) < 0.1


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"posteriordb data not found under {SHARED}")
def test_shared_posteriordb_reference_draws_load():
    ref = load_reference(SHARED / "kidiq-kidscore_momiq" / "reference_draws.json.zip")
    assert ref.draws["beta"].shape == (10, 1000, 2)
    assert ref.draws["sigma"].shape == (10, 1000)
    assert 15 < ref.draws["sigma"].mean() < 21


def test_posteriordb_names_read_the_draws_that_ship_inside_the_package(monkeypatch):
    monkeypatch.delenv("PPL_MODELS_POSTERIORDB", raising=False)
    import ppl_models
    from ppl_models.vi.script import posteriordb_dir

    package = Path(ppl_models.__file__).resolve().parent
    assert posteriordb_dir().resolve() == package / "data" / "posteriordb"
    by_name = load_reference("posteriordb:sblri-blr")
    by_path = load_reference(package / "data/posteriordb/sblri-blr/reference_draws.json.zip")
    assert set(by_name.draws) == set(by_path.draws) == {"beta", "sigma"}
    for site in by_name.draws:
        np.testing.assert_array_equal(by_name.draws[site], by_path.draws[site])
    with pytest.raises(FileNotFoundError, match="no-such-posterior"):
        load_reference("posteriordb:no-such-posterior")
