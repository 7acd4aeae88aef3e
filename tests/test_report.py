"""The self-contained HTML report."""

import base64

from ppl_models.report import Figure, Report, Table, format_cell, write_report

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_a_report_needs_neither_config_nor_env(tmp_path):
    (tmp_path / "f.png").write_bytes(PNG)
    report = Report(
        title="T",
        verdict=["one line"],
        tables=[Table("numbers", ["a", "b"], [[1, 0.5]])],
        figures=[Figure("fig", tmp_path / "f.png", "caption")],
    )
    html = write_report(tmp_path, report).read_text()
    assert "one line" in html and "(no config.toml)" in html
    assert base64.b64encode(PNG).decode() in html


def test_a_report_shows_its_config(tmp_path):
    (tmp_path / "config.toml").write_text("seed = 3\n")
    html = write_report(tmp_path, Report(title="T", verdict=[])).read_text()
    assert "seed = 3" in html


def test_cells():
    assert format_cell(3) == "3" and format_cell(0.1234567) == "0.123457"
    assert format_cell(None) == "—" and format_cell(True) == "True"
