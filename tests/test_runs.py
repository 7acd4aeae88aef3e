"""Run directories: never overwritten, atomic files, failures recorded."""

import json

import pytest

from ppl_models.runs import Run, atomic_save, atomic_write_json, read_metrics


def test_create_never_reuses_a_directory(tmp_path):
    first = Run.create("cfg", root=tmp_path)
    second = Run.create("cfg", root=tmp_path)
    assert first.path != second.path
    assert first.path.parent == second.path.parent == tmp_path / "cfg"
    assert (first.path / "figures").is_dir()


def test_out_must_be_new_or_empty(tmp_path):
    out = tmp_path / "out"
    Run.create("cfg", out=out)
    (out / "something").write_text("x")
    with pytest.raises(ValueError, match="already exists and is not empty"):
        Run.create("cfg", out=out)


def test_unwritable_location_is_a_value_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot write the run directory"):
        Run.create("cfg", out=blocker / "run")


def test_atomic_save_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_failure_is_recorded_and_metrics_stream(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with Run.create("cfg", out=tmp_path / "r") as run:
            run.log_metrics(step=0, loss=1.5)
            run.log_metrics(step=1, loss=1.25)
            raise ZeroDivisionError("boom")
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "ZeroDivisionError: boom" in summary["error"]
    assert read_metrics(tmp_path / "r") == [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 1.25}]


def test_open_requires_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        Run.open(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_save_makes_ordinary_files_under_the_processs_umask(tmp_path, umask):
    import os
    import stat

    before = os.umask(umask)
    try:
        target = tmp_path / "file.txt"
        atomic_save(target, lambda tmp: tmp.write_text("x"))
    finally:
        os.umask(before)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
