"""Config files: TOML -> frozen dataclass, overrides, unknown keys, round trip."""

import dataclasses

import pytest

from ppl_models.config import config_to_toml, load_config, parse_overrides


@dataclasses.dataclass(frozen=True)
class Example:
    name: str = "a"
    count: int = 3
    rate: float = 1.5
    flag: bool = False
    path: str | None = None

    def __post_init__(self):
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('count = 7\nrate = 2\nflag = true\npath = "x.csv"\n')
    cfg = load_config(Example, path, {"rate": "0.25", "name": "b"})
    assert cfg == Example(name="b", count=7, rate=0.25, flag=True, path="x.csv")
    assert load_config(Example, None) == Example()


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("cuont = 2\n")
    expected = "unknown config key 'cuont'.*valid keys: name, count, rate, flag, path"
    with pytest.raises(ValueError, match=expected):
        load_config(Example, path)
    with pytest.raises(ValueError, match="unknown config key 'nope' in overrides"):
        load_config(Example, None, {"nope": "1"})


@pytest.mark.parametrize(
    ("key", "value"),
    [("count", "many"), ("count", 2.5), ("rate", "x"), ("flag", "maybe"), ("count", True)],
)
def test_wrong_types_name_the_key_and_value(key, value):
    with pytest.raises(ValueError, match=f"config key '{key}' expects"):
        load_config(Example, None, {key: value})


def test_validation_runs_and_files_are_checked(tmp_path):
    with pytest.raises(ValueError, match="count must be >= 1, got 0"):
        load_config(Example, None, {"count": "0"})
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_config(Example, tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("count = = 3\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(Example, bad)


def test_round_trip_through_toml(tmp_path):
    cfg = Example(name='quote " and \\ slash', count=2, rate=1e-7, flag=True, path=None)
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    assert load_config(Example, path) == cfg


def test_parse_overrides():
    assert parse_overrides(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    assert parse_overrides(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["novalue"])
