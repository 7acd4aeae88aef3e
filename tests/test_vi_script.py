"""Model scripts and data files: loading, conversion, and every bad input in one clear line."""

import json
import sys
import zipfile

import pytest
import torch

from ppl_models.vi.script import (
    POSTERIORDB_ENV,
    check_data_keys,
    convert_data,
    load_data,
    load_script,
    posteriordb_file,
    read_data_file,
)

SCRIPT = """
import pyro
import pyro.distributions as dist

def model(x, scale=1.0):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(mu, scale), obs=x)

def guide(x, scale=1.0):
    pass

def data():
    return {"x": [1.0, 2.0]}
"""


def write(tmp_path, text, name="script.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_script_returns_its_parts_without_polluting_sys_modules(tmp_path):
    script = load_script(write(tmp_path, SCRIPT))
    assert callable(script.model) and callable(script.guide) and callable(script.data)
    assert script.load_data() == {"x": [1.0, 2.0]}
    assert not [m for m in sys.modules if m.startswith("_ppl_models_script_")]
    # two loads are two modules: state never leaks between them
    again = load_script(write(tmp_path, SCRIPT))
    assert again.module is not script.module


def test_missing_script(tmp_path):
    with pytest.raises(FileNotFoundError, match="model script not found"):
        load_script(tmp_path / "nope.py")


def test_script_that_fails_to_import_names_the_exception(tmp_path):
    path = write(tmp_path, "import pyro\nraise RuntimeError('no data here')\n")
    with pytest.raises(ValueError, match="failed to import: RuntimeError: no data here"):
        load_script(path)
    with pytest.raises(ValueError, match="SyntaxError"):
        load_script(write(tmp_path, "def model(:\n", "bad.py"))


def test_script_without_model(tmp_path):
    with pytest.raises(ValueError, match="defines no callable `model`"):
        load_script(write(tmp_path, "x = 1\n"))


def test_data_function_errors_are_one_line(tmp_path):
    script = load_script(write(tmp_path, "def model(x): pass\ndef data(): return 3\n"))
    with pytest.raises(ValueError, match="must return a dict"):
        script.load_data()
    script = load_script(write(tmp_path, "def model(x): pass\n", "nodata.py"))
    with pytest.raises(ValueError, match="defines no data"):
        script.load_data()


def test_json_and_json_zip_convert_the_same_way(tmp_path):
    content = {"N": 3, "rate": 1.5, "y": [1, 2, 3], "x": [[1.0, 2], [3, 4]], "name": "a"}
    (tmp_path / "d.json").write_text(json.dumps(content))
    with zipfile.ZipFile(tmp_path / "d.json.zip", "w") as archive:
        archive.writestr("data.json", json.dumps(content))
    for path in (tmp_path / "d.json", tmp_path / "d.json.zip"):
        data = load_data(path, dtype=torch.float32)
        assert data["N"] == 3 and isinstance(data["N"], int)
        assert data["rate"] == 1.5 and isinstance(data["rate"], float)
        assert data["y"].dtype == torch.int64 and data["y"].tolist() == [1, 2, 3]
        assert data["x"].dtype == torch.float32 and data["x"].shape == (2, 2)
        assert data["name"] == "a"
    assert load_data(tmp_path / "d.json")["x"].dtype == torch.float64  # the default dtype


def test_posteriordb_data_format(tmp_path):
    from ppl_models.vi.script import posteriordb_dir

    path = posteriordb_dir() / "sblri-blr" / "data.json.zip"
    if not path.is_file():
        pytest.skip(f"posteriordb data not found under {posteriordb_dir()}")
    data = load_data(path)
    assert data["X"].shape == (data["N"], data["D"]) and data["X"].dtype == torch.float64


@pytest.mark.parametrize("value", [float("nan"), [1.0, float("nan")], [[1.0], [float("nan")]]])
def test_nan_in_data_names_the_key(value):
    with pytest.raises(ValueError, match="'bad'"):
        convert_data({"ok": 1.0, "bad": value})


def test_nan_in_a_json_file(tmp_path):
    (tmp_path / "d.json").write_text('{"y": [1.0, NaN]}')
    with pytest.raises(ValueError, match="'y' contains NaN"):
        load_data(tmp_path / "d.json")


def test_unreadable_data_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_data_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_data_file(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        read_data_file(tmp_path / "list.json")
    with zipfile.ZipFile(tmp_path / "two.json.zip", "w") as archive:
        archive.writestr("a.json", "{}")
        archive.writestr("b.json", "{}")
    with pytest.raises(ValueError, match="exactly one JSON file, found 2"):
        read_data_file(tmp_path / "two.json.zip")
    (tmp_path / "broken.json.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        read_data_file(tmp_path / "broken.json.zip")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"\.json or \.json\.zip"):
        read_data_file(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="rectangular"):
        convert_data({"ragged": [[1.0, 2.0], [3.0]]})


def test_data_keys_must_fit_the_model():
    def model(x, y, scale=1.0):
        pass

    check_data_keys(model, {"x": 1, "y": 2})
    check_data_keys(model, {"x": 1, "y": 2, "scale": 3})
    with pytest.raises(ValueError, match=r"data has the key 'z' that model\(x, y, scale\) does"):
        check_data_keys(model, {"x": 1, "y": 2, "z": 3})
    with pytest.raises(ValueError, match=r"model\(x, y, scale\) needs 'y', which the data lacks"):
        check_data_keys(model, {"x": 1})

    def anything(x, **rest):
        pass

    check_data_keys(anything, {"x": 1, "whatever": 2})


def test_wrong_data_keys_are_said_once_in_plain_words():
    """The message "data keys ['y'] are not parameters of the model: data keys ['y'], ..." said
    the same thing twice; it names each wrong key once, with the model's signature."""

    def model(x, sigma=1.0):
        pass

    with pytest.raises(ValueError) as wrong:
        check_data_keys(model, {"y": [1.0]})
    message = str(wrong.value)
    assert message.count("'y'") == 1 and message.count("'x'") == 1, message
    assert "model(x, sigma)" in message and "data keys" not in message
    assert "rename" in message  # what to do about it


def test_posteriordb_file_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv(POSTERIORDB_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=POSTERIORDB_ENV):
        posteriordb_file("kidiq-kidscore_momiq")
