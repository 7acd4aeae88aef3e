"""The self-contained HTML report."""

import base64

from ppl_models.report import (
    Badge,
    Details,
    Figure,
    KeyNumber,
    Num,
    Report,
    Table,
    format_cell,
    format_number,
    format_seconds,
    write_report,
)

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
    assert format_cell(3) == "3" and format_cell(0.1234567) == "0.123"
    assert format_cell(None) == "—" and format_cell(True) == "True"
    assert format_cell(123456) == "123,456"


def test_numbers_are_rounded_to_what_their_monte_carlo_error_supports():
    # the examples: six significant digits, most of them Monte Carlo noise
    assert format_number(0.00284513) == "0.00285"
    assert format_number(6.04685) == "6.05"
    assert format_number(-33.91676474, se=0.0045) == "-33.917"
    assert format_number(-33.91676474, se=0.045) == "-33.92"
    assert format_number(6.04685, se=0.3) == "6.0"
    assert format_number(1234.5678) == "1235"  # the integer part is never rounded away
    assert format_number(3.2e-7) == "3.20e-07" and format_number(2.5e8) == "2.50e+08"
    assert format_number(0.5, se=1e-12) == "0.500000"  # at most six significant digits
    assert format_number(None) == "—" and format_number(float("inf")) == "∞"
    assert str(Num(0.123456, se=0.01)) == "0.12" and str(Num(1.1126e-05, unit="s")) == "<0.01 s"


def test_times_are_seconds_with_sensible_precision():
    assert format_seconds(1.1126e-05) == "<0.01 s"
    assert format_seconds(0.08591) == "0.09 s"
    assert format_seconds(4.310041) == "4.3 s"
    assert format_seconds(88.4) == "88 s"
    assert format_seconds(725) == "12 min 5 s"
    assert format_seconds(7385) == "2 h 3 min"


def test_columns_empty_in_every_row_are_left_out(tmp_path):
    table = Table(
        "side by side", ["element", "mean", "ref mean", "ref sd"], [["a", 1.0, None, None]]
    )
    html = write_report(tmp_path, Report(title="T", verdict=[], tables=[table])).read_text()
    assert "<th>mean</th>" in html and "ref mean" not in html and "ref sd" not in html


def test_the_first_screen_has_the_badge_the_steps_and_the_numbers_in_that_order(tmp_path):
    report = Report(
        title="T",
        verdict=["a long paragraph of rules"],
        badge=Badge("NOT TRUSTWORTHY", "bad", "do not use it", "k-hat is 0.87."),
        next_steps=["Try `--guide auto-mvn`."],
        key_numbers=[KeyNumber("PSIS k-hat", Num(0.8667, digits=2), "threshold 0.7", "#w", "bad")],
        details=[Details("Rules of the verdict", ["rule one <b>"])],
        tables=[Table("Evidence", ["q", "v"], [["x", 1.0]])],
    )
    html = write_report(tmp_path, report).read_text()
    at = [html.index(s) for s in ("NOT TRUSTWORTHY", "What to do next", "PSIS k-hat", "<details")]
    assert at == sorted(at) and html.index("<details") < html.index('id="evidence"')
    assert "<code>--guide auto-mvn</code>" in html and 'href="#w"' in html and "0.87" in html
    assert "rule one &lt;b&gt;" in html  # escaped


def test_the_first_screen_has_room_for_one_more_block(tmp_path):
    # the escalation ladder's table will go here, between the numbers and the sections
    ladder = Table("Escalation ladder", ["step", "guide", "verdict"], [[1, "auto-normal", "no"]])
    report = Report(
        title="T",
        verdict=[],
        badge=Badge("MEANS ONLY", "warn", "the means", "why."),
        next_steps=["one"],
        first_screen=[ladder],
        tables=[Table("Evidence", ["q", "v"], [["x", 1.0]])],
    )
    html = write_report(tmp_path, report).read_text()
    first = html[html.index('id="verdict"') : html.index("</section>")]
    assert "Escalation ladder" in first and "auto-normal" in first
