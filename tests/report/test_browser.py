"""The generated report in a real browser (headless Chromium, Debian's `chromium` package):
it loads with no console error, no uncaught exception, no failed resource and no request off
the machine, and every figure is an image that decoded. A self-test proves each check can fail.

Chromium is installed by tests/report/install_chromium.sh (CI calls it). Without it the test is
skipped, except under CI=true, where it tries the script and then fails if still absent.
"""


import pytest

from attnbench.report import figures
from tests.report.browser import Browser, chromium_or_skip


@pytest.fixture(scope="module")
def browser():
    b = Browser(chromium_or_skip())
    yield b
    b.close()


def test_report_loads_cleanly_and_shows_its_figures(browser, golden_report):
    page = browser.inspect(golden_report)
    assert page.problems == []
    assert page.title.startswith("attnbench report: golden-torch-cpu")
    assert page.scripts == 0
    expected = len(figures.FIGURES) + 1  # + the attention pattern
    assert len(page.images) == expected
    assert len(page.loaded_images) == expected, [i for i in page.images if not i["width"]]
    assert all(i["width"] > 300 and i["height"] > 150 for i in page.images), page.images
    assert page.text_length > 5000
    assert page.page_width <= 1400  # wide tables scroll inside their box, not the page


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<img alt="missing" src="no-such-figure.svg">'
        '<img alt="remote" src="http://127.0.0.1:9/figure.png">'
        "<script>console.error('logged error'); alert('escaped badly');</script>"
        "<script>undefinedFunction();</script>"
        "</body></html>")
    page = browser.inspect(broken)
    assert page.console_errors == ["logged error"]
    assert len(page.exceptions) == 1 and "undefinedFunction" in page.exceptions[0]
    assert page.dialogs == ["alert: escaped badly"]
    assert page.external_requests == ["http://127.0.0.1:9/figure.png"]
    assert any("no-such-figure.svg" in e for e in page.log_errors), page.log_errors
    assert page.loaded_images == [] and len(page.images) == 2
    assert len(page.problems) >= 5
