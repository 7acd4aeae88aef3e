"""The reports and the built documentation in a real browser: headless Chromium (Debian's
``chromium`` package), driven over the DevTools protocol on a pipe (:mod:`browser`).

For the fit, exp-normal and VAE reports (and the page of ``ppl-models compare``), at 1280 px
and at a 390 px phone width: every image loads, nothing overflows the page horizontally (a wide
table scrolls in its own box), and the console shows no errors; at 1280 x 900 the verdict's
badge and the next steps are on the first screen. The built documentation's tutorial pages get
the same checks when ``docs/_build/html`` exists (``make docs``; the CI runs these tests again
after building it).

Every check saves a screenshot of the first screen under the test's temporary folder, for a
person to look at; a failing check prints its path. Without Chromium the tests skip, saying so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from browser import Browser, find_chromium
from vi_helpers import FakeFit, gaussian_problem, normal_guide

from ppl_models import cli
from ppl_models.tutorial import MNIST_MISSING

CHROMIUM, MISSING = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=MISSING or "no Chromium")
REPO = Path(__file__).resolve().parents[1]
BUILT_TUTORIALS = REPO / "docs" / "_build" / "html" / "tutorials"
WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM) as opened:
        yield opened


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def fit_report(tmp_path_factory) -> Path:
    from ppl_models.vi.diagnose import diagnose
    from ppl_models.vi.references import Reference
    from ppl_models.vi.report import write_report

    model, data, m, s = gaussian_problem(d=3, n=5)
    guide = normal_guide(m + torch.tensor([0.0, 0.0, 0.6]) * s, torch.full_like(m, 0.7 * s))
    draws = torch.distributions.Normal(m, s).sample((4, 1000)).numpy()
    fit = FakeFit(model, guide, data, max_plate_nesting=2, guide_name="auto-normal")
    diagnosis = diagnose(fit, Reference({"mu": draws}, "exact draws"), draws=4000, progress=False)
    return write_report(diagnosis, tmp_path_factory.mktemp("fit") / "run")


@pytest.fixture(scope="module")
def exp_normal_report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp-normal") / "run"
    args = ["exp-normal", "--out", str(out), "--quiet", "--steps", "100"]
    assert cli.main([*args, "--particles", "256", "--set", "draws=1000"]) == 0
    return out / "report.html"


@pytest.fixture(scope="module")
def vae_report(tmp_path_factory, synthetic_mnist) -> Path:
    from test_vae_job import tiny

    out = tmp_path_factory.mktemp("vae") / "run"
    assert cli.main(tiny(synthetic_mnist, out, "--epochs", "1")) == 0
    return out / "report.html"


def _assert_clean(page, where: str, *, images: bool = True) -> None:
    assert page.images or not images, f"no images on {page.url} {where}"
    broken = [i["src"] for i in page.images if not (i["complete"] and i["width"] > 0)]
    assert not broken, f"images that did not load: {broken} {where}"
    assert page.scroll_width <= page.width, (
        f"the page is {page.scroll_width} px wide in a {page.width} px window; sticking out: "
        f"{page.outside} {where}"
    )
    assert not page.console_errors, f"console errors: {page.console_errors} {where}"


@pytest.fixture(scope="module")
def compare_report(tmp_path_factory, fit_report, exp_normal_report) -> Path:
    out = tmp_path_factory.mktemp("compare") / "page"
    runs = [str(fit_report.parent), str(exp_normal_report.parent)]
    assert cli.main(["compare", *runs, "--out", str(out)]) == 0
    return out / "report.html"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("report", ["fit", "exp-normal", "vae", "compare"])
def test_reports_load_whole_and_fit_the_window(report, width, request, browser, screenshots):
    path = request.getfixturevalue(f"{report.replace('-', '_')}_report")
    shot = screenshots / f"{report}-{width}.png"
    page = browser.check(path, width, shot)
    _assert_clean(page, f"(screenshot of the first screen: {shot})")


@pytest.mark.parametrize(
    "report",
    ["fit", "exp-normal", "vae", "compare"],
)
def test_the_badge_and_the_next_steps_are_on_the_first_screen(
    report, request, browser, screenshots
):
    path = request.getfixturevalue(f"{report.replace('-', '_')}_report")
    shot = screenshots / f"{report}-first-screen.png"
    page = browser.check(path, 1280, shot)
    where = f"(screenshot: {shot})"
    assert (page.width, page.height) == (1280, 900), where
    for element in ("badge", "next-steps"):
        assert page.within_first_screen(element), (
            f"#{element} is not inside the first 1280 x 900 screen: {page.boxes[element]} {where}"
        )


def _tutorial_pages() -> list[Path]:
    return sorted(BUILT_TUTORIALS.glob("*.html")) if BUILT_TUTORIALS.is_dir() else []


@pytest.mark.skipif(
    not _tutorial_pages(), reason=f"the documentation is not built ({BUILT_TUTORIALS}: make docs)"
)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", _tutorial_pages(), ids=lambda p: p.stem)
def test_built_tutorial_pages_load_whole_and_fit_the_window(page, width, browser, screenshots):
    shot = screenshots / f"docs-{page.stem}-{width}.png"
    seen = browser.check(page, width, shot, ids=("main-content",))
    # an MNIST page built without the images says so and runs none of its MNIST cells: it has
    # no pictures to load, and must still load whole and fit the window
    without_mnist = MNIST_MISSING in page.read_text(encoding="utf-8")
    where = f"(screenshot of the first screen: {shot})"
    _assert_clean(seen, where, images=not without_mnist)
