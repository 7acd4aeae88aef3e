"""The report at large d: a bounded, chosen subset of elements, said so in the captions."""

import struct

import numpy as np

from ppl_models import diagnostics
from ppl_models.vi import figures as vf

J = 200  # one site of J elements and two scalar sites: over every cap of the report


def _rows(worst: dict[int, float]) -> list[dict]:
    """Parameter rows of mu, tau and alpha[1..J], each alpha[j] off by ``worst.get(j, 0.01)``
    reference sds (and sd ratio 1), mu and tau not off at all."""
    rows = [
        {"name": name, "site": name, "mean": 0.0, "sd": 1.0, "std_mean_error": 0.0,
         "sd_ratio": 1.0}
        for name in ("mu", "tau")
    ]  # fmt: skip
    rows += [
        {"name": f"alpha[{j}]", "site": "alpha", "mean": 0.0, "sd": 1.0,
         "std_mean_error": worst.get(j, 0.01), "sd_ratio": 1.0}
        for j in range(1, J + 1)
    ]  # fmt: skip
    return rows


WORST = {17: 5.0, 101: -4.0, 3: 3.0, 188: 2.5}  # the planted elements furthest off


def test_the_globals_and_the_elements_furthest_off_are_kept_in_order():
    rows = _rows(WORST)
    kept = vf.globals_and_furthest_off(rows, vf.error_score, 6)
    assert [r["name"] for r in kept] == [
        "mu", "tau", "alpha[3]", "alpha[17]", "alpha[101]", "alpha[188]",
    ]  # fmt: skip
    kept = vf.globals_and_furthest_off(rows, vf.error_score, 4)
    assert [r["name"] for r in kept] == ["mu", "tau", "alpha[17]", "alpha[101]"]
    assert vf.globals_and_furthest_off(rows[:5], vf.error_score, 6) == rows[:5]
    words = vf.shown_words(kept, rows, "elements", "the file holds the rest")
    assert "4 of the 202 elements" in words and "scalar sites (2)" in words
    assert "the 2 furthest off" in words and words.endswith("; the file holds the rest.")
    assert vf.shown_words(rows, rows, "elements", "the file holds the rest") == ""


def _png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    return struct.unpack(">II", header[16:24])


def test_the_bounds_figure_draws_a_bounded_chosen_set_of_coordinates(tmp_path):
    """It drew a bar pair for every coordinate, 0.5 inch each: at d = 10,000 a figure 5,000
    inches wide that took most of the report's time and memory."""
    rows = _rows(WORST)
    coords = [
        {"name": r["name"], "site": r["site"], "sd": 2.0, "mean_error": 1.0, "sd_error": 1.0}
        for r in rows
    ]
    summary = {"parameters": rows, "error_bounds_per_coordinate": coords, "d2": 0.1}
    _, path, caption = vf.bounds_vs_errors(tmp_path, summary)
    assert f"Shown: {vf.MAX_COORDINATES} of the {J + 2} coordinates" in caption
    assert "scalar sites (2)" in caption and "summary.json holds every coordinate's" in caption
    width, _ = _png_size(path)
    small = {"parameters": rows[:12], "error_bounds_per_coordinate": coords[:12], "d2": 0.1}
    (tmp_path / "small").mkdir()
    _, small_path, small_caption = vf.bounds_vs_errors(tmp_path / "small", small)
    assert "Shown" not in small_caption
    # 40 bars draw about as wide as 40 of 0.5 inch, not J + 2 of them
    assert width < 2 * _png_size(small_path)[0] * vf.MAX_COORDINATES / 12


def test_marginals_read_only_the_elements_they_draw(tmp_path):
    """Each figure copied every element's draws (d x S values) to draw at most 24 of them."""
    rng = np.random.default_rng(0)
    alpha = rng.normal(size=(2, 50, J))
    idata = diagnostics.from_dict(
        posterior={"mu": rng.normal(size=(2, 50)), "tau": rng.normal(size=(2, 50)),
                   "alpha": alpha}
    )  # fmt: skip
    got = vf._element_draws(idata, "posterior", ["alpha[17]", "tau", "nothing[3]"])
    assert set(got) == {"alpha[17]", "tau"}
    np.testing.assert_array_equal(got["alpha[17]"], alpha[:, :, 16].ravel())
    assert got["alpha[17]"].base is None  # a copy of one column, not a view of the group
    rows = _rows(WORST)
    _, _, caption = vf.marginals(tmp_path, {"parameters": rows}, idata)
    assert f"Shown: {vf.MAX_MARGINALS} of the {J + 2} elements" in caption
    assert "posterior.nc holds every element's draws" in caption


def test_the_per_element_tables_show_a_chosen_set_and_say_where_the_rest_are():
    """The report's tables held a row for each of d elements and d coordinates."""
    from ppl_models.vi.report import TABLE_ROWS, tables

    rows = _rows(WORST)
    coords = [
        {"name": r["name"], "site": r["site"], "sd": 2.0, "mean_error": 1.0, "sd_error": 1.0}
        for r in rows
    ]
    summary = {
        "parameters": rows, "error_bounds_per_coordinate": coords, "draws": 1000,
        "elbo": -1.0, "elbo_se": 0.1, "iw_bounds": {}, "cubo2": 0.0, "d2": 0.1,
        "psis_khat": 0.3, "psis_khat_threshold": 0.7, "importance_ess": 900.0,
        "error_bounds": {"w1": 1.0, "w2": 1.0, "mean_error": 1.0, "sd_error": 1.0},
    }  # fmt: skip
    side, _, bounds = tables(summary)[:3]
    for table in (side, bounds):
        names = [row[0] for row in table.rows]
        assert len(names) == TABLE_ROWS
        assert {"mu", "tau", *(f"alpha[{j}]" for j in WORST)} <= set(names)
        assert names == sorted(names, key=[r["name"] for r in rows].index)  # the summary's order
        assert f"Shown: {TABLE_ROWS} of the {J + 2}" in table.note
        assert "summary.json holds every row" in table.note
