"""The published site (attnbench.history.publish): pages, links, failures and unstable points
shown as what they are, hostile labels escaped, incremental re-publishing, nothing off the
machine, and the pages in a real browser (headless Chromium, as the report is tested)."""

from __future__ import annotations

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from attnbench.history.model import (
    HIGHER,
    IMPROVEMENT,
    LOWER,
    RATIO,
    REGRESSION,
    History,
    Machine,
    Point,
    Run,
    Series,
    Step,
)
from attnbench.history.publish import INDEX, MANIFEST, REGRESSIONS, PublishResult, publish

HOSTILE = "<script>alert(\"label\")</script> & 'quoted' <b>bold</b>"
SHAS = [f"{i:x}" * 40 for i in range(1, 9)]   # 1111..., 2222..., ...


class Links(HTMLParser):
    """Every href/src of a page, the ids it defines, and how many of each tag it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: dict[str, int] = {}
        self.titles: list[str] = []
        self._in_title = 0

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("href", "src", "xlink:href", "action") and value is not None:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)
        if tag == "title":
            self._in_title += 1
            self.titles.append("")

    def handle_endtag(self, tag):
        if tag == "title" and self._in_title:
            self._in_title -= 1

    def handle_data(self, data):
        if self._in_title:
            self.titles[-1] += data


def parse(path: Path) -> Links:
    parser = Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def make_history(runs_dir: Path, *, extra_run: bool = False) -> History:
    """A history as the database reads it back: two machines, six commits on the first and
    four on the second (one run each), a case with time and memory, a case with a hostile
    label, a GPU case, a ratio series both machines share, failures (value None), an unstable
    point, and steps with and without a verdict. ``extra_run``: one more run on machine 1, at
    a seventh commit, of the LSH case and the ratio only."""
    machines = {
        1: Machine(1, "a1b2c3d4e5f6a7b8", {"cpu": "Xeon <Gold> & co", "cpu_count": 2,
                                          "memory_total_gib": 8, "gpus": [],
                                          "torch": "2.4.0"}),
        2: Machine(2, "f0e1d2c3b4a59687", {"cpu": "EPYC", "cpu_count": 16, "gpus": ["H200"],
                                          "torch": "2.4.0", "jax": "0.4.30"}),
    }
    runs: dict[int, Run] = {}
    plan = [(1, c) for c in range(6)] + [(2, c) for c in (0, 2, 3, 5)]
    if extra_run:
        plan.append((1, 6))
    for run_id, (machine, commit) in enumerate(plan, start=1):
        path = runs_dir / f"run-m{machine}-c{commit}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "index.html").write_text("<!DOCTYPE html><title>report</title>")
        runs[run_id] = Run(id=run_id, run_id=f"20250101T0000{run_id:02d}-m{machine}",
                           kind="run", path=str(path), sha=SHAS[commit], dirty=False,
                           committed_at=f"2025-01-0{commit + 1}T12:00:00+00:00",
                           started_at=f"2025-02-0{commit + 1}T12:00:00+00:00",
                           machine_id=machine, suite="ci", position=float(commit))
    series = {
        1: Series(1, 1, "lsh/n=1024", "LSH n=1024", "time_median_s", LOWER),
        2: Series(2, 1, "lsh/n=1024", "LSH n=1024", "mem_peak_mb", LOWER),
        3: Series(3, 1, "evil/case", HOSTILE, "time_median_s", LOWER),
        4: Series(4, 2, "lsh/n=1024", "LSH n=1024", "time_median_s", LOWER),
        5: Series(5, 2, "lsh/n=1024", "LSH n=1024", "task_accuracy", HIGHER),
        6: Series(6, None, "contract:ci:lsh_over_full", "lsh over full at n=1024", RATIO,
                  LOWER),
    }
    points: dict[int, list[Point]] = {sid: [] for sid in series}

    def ok(sid, run, value, **kw):
        kw.setdefault("lo", value * 0.97)
        kw.setdefault("hi", value * 1.04)
        points[sid].append(Point(sid, run.id, run.position, run.sha, "ok", value,
                                 samples=kw.pop("samples", 20), **kw))

    def failed(sid, run, status, error=None, **kw):
        points[sid].append(Point(sid, run.id, run.position, run.sha, status, None,
                                 error=error, **kw))

    for run in sorted(runs.values(), key=lambda r: (r.position, r.id)):
        c = int(run.position)
        if run.machine_id == 1:
            if c == 4:
                failed(1, run, "oom", error="CUDA out of memory <tried 4 GiB>")
                failed(2, run, "oom")
            else:
                ok(1, run, 0.0100 if c < 3 else 0.0130, unstable=(c == 1),
                   unstable_reasons=("cv 12% > 5%", "<b>throttled</b>") if c == 1 else ())
                ok(2, run, 512.0 if c < 5 else 400.0, lo=None, hi=None, samples=None)
            if c < 6:
                if c == 2:
                    failed(3, run, "timeout", error="ran past 600 s")
                else:
                    ok(3, run, 2.5e-4 * (1 + c / 100))
            ok(6, run, 0.40 if c < 3 else 0.52, lo=None, hi=None, bound_hi=0.5)
        else:
            ok(4, run, 0.0020)
            ok(5, run, 0.91, lo=None, hi=None)
            if c == 3:
                failed(6, run, "error", error="full attention failed", bound_hi=0.5)
            else:
                ok(6, run, 0.41 if c < 3 else 0.53, lo=None, hi=None, bound_hi=0.5)
    for sid in points:
        points[sid].sort(key=lambda p: (p.position, p.run_id))
    steps = [
        Step(1, SHAS[2], SHAS[3], 0.0100, 0.0130, 1.3, REGRESSION,
             evidence={"penalty": 0.5, "points_before": 3, "points_after": 2,
                       "<odd key>": "<odd value>"},
             id=1, verdict="confirmed", verdict_detail={"p_value": 0.0004, "pairs": 12}),
        Step(2, SHAS[4], SHAS[5], 512.0, 400.0, 400 / 512, IMPROVEMENT,
             evidence={"penalty": 0.5}, id=2),
        Step(6, SHAS[2], SHAS[3], 0.405, 0.525, 1.296, REGRESSION, evidence={}, id=3,
             verdict="not reproduced"),
    ]
    return History(machines, runs, series, points, steps)


@pytest.fixture
def site(tmp_path) -> tuple[Path, History, PublishResult]:
    history = make_history(tmp_path / "runs")
    out = tmp_path / "site"
    return out, history, publish(history, out)


def case_pages(out: Path) -> list[Path]:
    return sorted(out.glob("case-*.html"))


def lsh_on_machine_1(out: Path) -> Path:
    found = [p for p in case_pages(out) if "a1b2c3d4e5f6" in p.read_text()
             and "<h1>LSH n=1024</h1>" in p.read_text()]
    assert len(found) == 1, found
    return found[0]


def page_for(out: Path, text: str) -> Path:
    """The one case page whose <h1> holds ``text`` (escaped as a page would)."""
    import html

    found = [p for p in case_pages(out)
             if f"<h1>{html.escape(text, quote=True)}</h1>" in p.read_text(encoding="utf-8")]
    assert len(found) == 1, (text, found)
    return found[0]


def test_every_page_is_written_and_every_link_resolves(site):
    out, history, result = site
    cases = case_pages(out)
    # (machine 1, lsh), (machine 1, evil), (machine 2, lsh), (the ratio)
    assert len(cases) == 4
    assert all(re.fullmatch(r"case-[a-z0-9-]+-[0-9a-f]{12}\.html", p.name) for p in cases)
    expected = {out / INDEX, out / REGRESSIONS, out / MANIFEST, *cases}
    assert set(result.written) == expected and result.unchanged == [] and result.removed == []
    assert json.loads((out / MANIFEST).read_text())["pages"] == [p.name for p in cases]
    reports = set()
    for page in [out / INDEX, out / REGRESSIONS, *cases]:
        parsed = parse(page)
        assert parsed.links, page
        for link in parsed.links:
            parts = urlsplit(link)
            assert not parts.scheme and not parts.netloc, (page.name, link)
            target = (out / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_file(), (page.name, link)
            if parts.fragment:   # an anchor names a section the target page has
                assert parts.fragment in parse(target).ids, (page.name, link)
            if target.name == "index.html" and target.parent != out:
                reports.add(target.parent.name)
        assert parsed.tags.get("script", 0) == 0
    # every run's report is linked from some page
    assert reports == {Path(r.path).name for r in history.runs.values()}
    index = (out / INDEX).read_text()
    for case in cases:
        assert f'href="{case.name}"' in index
    assert "Ratios shared by every machine" in index
    assert "Xeon &lt;Gold&gt; &amp; co" in index and "GPU H200" in index


def test_a_failure_shows_as_its_status(site):
    out, _, _ = site
    text = lsh_on_machine_1(out).read_text()
    # on the chart: the status written at the commit, and a tooltip that says what failed
    assert re.search(r'<g class="failure"><title>5555555 [^<]*\nfailed: oom: CUDA out of '
                     r"memory &lt;tried 4 GiB&gt;", text)
    assert re.search(r'rotate\(90\)">oom</text>', text)
    # in the table: a failed row with the status, and no value
    rows = re.findall(r'<tr class="fail">(.*?)</tr>', text)
    assert rows and all('<span class="status oom">oom</span>' in r for r in rows)
    assert all('<td class="num">-</td>' in r for r in rows)
    # never a point (a zero, or any value) in its place
    assert not re.search(r"<circle[^>]*><title>5555555", text)
    evil = page_for(out, HOSTILE).read_text()
    assert 'rotate(90)">timeout</text>' in evil and "ran past 600 s" in evil
    # the latest point of the ratio on machine 2 and the overview
    index = (out / INDEX).read_text()
    assert '<span class="status oom">oom</span>' not in index   # machine 1's latest is ok
    ratio = page_for(out, "lsh over full at n=1024").read_text()
    assert 'rotate(90)">error</text>' in ratio and "full attention failed" in ratio


def test_a_ratio_chart_draws_its_contracts_limit_and_each_point_says_if_it_met_it(site):
    import html

    out, _, _ = site
    ratio = html.unescape(page_for(out, "lsh over full at n=1024").read_text())
    assert ratio.count('<g class="limit">') == 1 and "limit \u2264 0.5</text>" in ratio
    assert "contract: want \u2264 0.5: met" in ratio       # 0.40 and 0.41
    assert "contract: want \u2264 0.5: missed" in ratio    # 0.52 and 0.53
    assert "contract: want \u2264 0.5: not measured" in ratio  # the failed point
    assert '<g class="limit">' not in lsh_on_machine_1(out).read_text()  # no contract


def test_the_latest_failure_is_the_overviews_latest_value(tmp_path):
    history = make_history(tmp_path / "runs")
    run = history.runs[6]   # machine 1, the newest commit
    history.points[3][-1] = Point(3, run.id, run.position, run.sha, "timeout", None)
    out = tmp_path / "site"
    publish(history, out)
    index = (out / INDEX).read_text()
    row = next(r for r in index.split("<tr>") if "&lt;script&gt;" in r)
    assert '<span class="status timeout">timeout</span>' in row
    assert "last value 260 us at 5555555" in row   # c=4: 2.5e-4 * 1.04


def test_unstable_points_are_drawn_apart_with_their_reasons(site):
    out, _, _ = site
    text = lsh_on_machine_1(out).read_text()
    hollow = re.findall(r'<circle class="unstable"[^>]*fill="#fff"[^>]*><title>([^<]*)</title>',
                        text)
    assert len(hollow) == 1
    assert "2222222" in hollow[0]
    assert "unstable: cv 12% &gt; 5%; &lt;b&gt;throttled&lt;/b&gt;" in hollow[0]
    assert len(re.findall(r'<circle class="stable"', text)) == 5 + 5 - 1   # time + memory
    assert re.search(r'<tr class="unstable">.*?cv 12% &gt; 5%; &lt;b&gt;throttled', text)
    # the uncertainty is drawn: error bars for the time, none for a memory without a band
    assert text.count('<path class="bands"') == 1


def test_steps_are_annotated_with_commits_and_verdicts(site):
    out, _, _ = site
    text = lsh_on_machine_1(out).read_text()
    assert "3333333\u21924444444 \u00d71.3 regression, confirmed" in text
    assert "5555555\u21926666666 \u00d70.781 improvement, not yet confirmed" in text
    assert text.count('<g class="step">') == 2
    regressions = (out / REGRESSIONS).read_text()
    kinds = re.findall(r'<td class="kind">(\w+)</td>', regressions)
    assert kinds == [REGRESSION, REGRESSION, IMPROVEMENT]   # regressions first
    verdicts = re.findall(r'<td class="verdict-[a-z-]+">([a-z ]+)', regressions)
    assert verdicts == ["confirmed", "not reproduced", "not yet confirmed"]
    assert "\u00d71.3 (+30.0%)" in regressions and "p_value: 0.0004" in regressions
    assert "&lt;odd key&gt;: &lt;odd value&gt;" in regressions
    assert "every machine" in regressions
    index = (out / INDEX).read_text()
    assert "regression \u00d71.3 (+30.0%) at 3333333\u21924444444" in index


def test_hostile_text_is_escaped_everywhere(site):
    out, _, _ = site
    for page in [out / INDEX, out / REGRESSIONS, *case_pages(out)]:
        text = page.read_text()
        assert "<script" not in text and "<b>" not in text, page.name
        assert parse(page).tags.get("script", 0) == 0
    evil = page_for(out, HOSTILE)
    assert "&lt;script&gt;alert(&quot;label&quot;)&lt;/script&gt; &amp; &#x27;quoted&#x27;" \
        in evil.read_text()
    assert parse(evil).titles[0].startswith(HOSTILE)   # the browser shows the label itself


def test_no_page_references_anything_off_the_machine(site):
    out, _, _ = site
    for page in [out / INDEX, out / REGRESSIONS, *case_pages(out)]:
        text = page.read_text()
        assert not re.search(r"(?i)\b(https?|ftp|wss?):|//[a-z0-9]|url\(|@import", text), \
            page.name
        assert all(not urlsplit(link).scheme and not link.startswith("//")
                   for link in parse(page).links)


def test_republishing_rewrites_only_what_changed(tmp_path):
    out = tmp_path / "site"
    first = publish(make_history(tmp_path / "runs"), out)
    inodes = {p: os.stat(p).st_ino for p in first.written}
    again = publish(make_history(tmp_path / "runs"), out)
    assert again.written == [] and again.removed == []
    assert sorted(again.unchanged) == sorted(first.written)
    assert {p: os.stat(p).st_ino for p in again.unchanged} == inodes   # not even touched

    history = make_history(tmp_path / "runs", extra_run=True)   # one more run on machine 1
    result = publish(history, out)
    changed = {out / INDEX, page_for(out, "lsh over full at n=1024"), lsh_on_machine_1(out)}
    assert set(result.written) == changed
    assert set(result.unchanged) == set(first.written) - changed
    assert out / REGRESSIONS in result.unchanged and out / MANIFEST in result.unchanged
    assert page_for(out, HOSTILE) in result.unchanged   # same machine, not in the new run
    for path in result.unchanged:
        assert os.stat(path).st_ino == inodes[path]
    assert "7777777" in (out / INDEX).read_text()
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_stale_pages_of_publish_go_and_nothing_else(tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "case-handmade.html").write_text("mine too")
    history = make_history(tmp_path / "runs")
    publish(history, out)
    evil = page_for(out, HOSTILE)
    del history.series[3], history.points[3]
    result = publish(history, out)
    assert result.removed == [evil] and not evil.exists()
    assert evil.name not in json.loads((out / MANIFEST).read_text())["pages"]
    assert out / MANIFEST in result.written and out / INDEX in result.written
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "case-handmade.html").read_text() == "mine too"
    # a manifest naming files that publish could never have written removes none of them
    (out / MANIFEST).write_text(json.dumps({"format": "attnbench-history-site", "version": 1,
                                            "pages": ["notes.txt", "../x.html",
                                                      "case-handmade.html/../notes.txt"]}))
    publish(history, out)
    assert (out / "notes.txt").exists()


def test_report_url_decides_the_links(tmp_path):
    history = make_history(tmp_path / "runs")
    out = tmp_path / "site"
    publish(history, out, title="T <&>",
            report_url=lambda run: None if run.id % 2 else f"reports/{run.run_id}.html")
    text = page_for(out, HOSTILE).read_text()
    links = [link for link in parse(page_for(out, HOSTILE)).links
             if link.startswith("reports/")]
    assert links and all(int(re.search(r"00(\d\d)-m", link).group(1)) % 2 == 0
                         for link in links)
    assert "<title>T &lt;&amp;&gt;</title>" in (out / INDEX).read_text()
    assert "T &lt;&amp;&gt;" in text
    # a link that is not a place (javascript:) is dropped, not written
    publish(history, out, report_url=lambda run: "javascript:alert(1)")
    assert all("javascript" not in p.read_text() for p in case_pages(out))


def test_an_empty_history_publishes_an_overview_that_says_so(tmp_path):
    result = publish(History(), tmp_path / "site")
    assert {p.name for p in result.written} == {INDEX, REGRESSIONS, MANIFEST}
    assert "holds no series yet" in (tmp_path / "site" / INDEX).read_text()
    assert "No step found" in (tmp_path / "site" / REGRESSIONS).read_text()


# --------------------------------------------------------------------------------------------
# In the browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from tests.report.browser import Browser, chromium_or_skip

    b = Browser(chromium_or_skip())
    yield b
    b.close()


def test_the_site_loads_cleanly_in_the_browser(browser, site):
    out, _, _ = site
    for page in [out / INDEX, page_for(out, HOSTILE), page_for(out, "lsh over full at n=1024"),
                 out / REGRESSIONS]:
        report = browser.inspect(page)
        assert report.problems == [], (page.name, report.problems)
        assert report.scripts == 0 and report.dialogs == []
        assert report.text_length > 200, page.name
        assert report.page_width <= 1400, page.name
    assert browser.inspect(out / INDEX).title == "attnbench history"
    assert browser.inspect(page_for(out, HOSTILE)).title.startswith(HOSTILE)


def test_odd_shapes_publish_without_inventing_anything(tmp_path):
    """One point; only failures; a NaN marked ok; a step whose commits are not on the
    timeline, one of a series the history lacks; a run of a machine it lacks."""
    run = Run(1, "r1", "pytest-benchmark", str(tmp_path / "bench.json"), None, None, None,
              None, 9, "pytest")
    run2 = Run(2, "r2", "run", "", "ab" * 20, True, None, None, 9, "ci", position=2.0)
    series = {1: Series(1, 9, "one", "one point", "time_median_s", LOWER),
              2: Series(2, 9, "dead", "always fails", "mem_peak_mb", LOWER),
              3: Series(3, 9, "nan", "not a number", "approx_recall", HIGHER)}
    points = {1: [Point(1, 1, 1.0, None, "ok", 0.5)],
              2: [Point(2, 1, 1.0, None, "skipped", None),
                  Point(2, 2, 2.0, "ab" * 20, "error", None, error="boom")],
              3: [Point(3, 1, 1.0, None, "ok", float("nan"))]}
    steps = [Step(1, "f" * 40, "e" * 40, 0.5, 0.7, 1.4, REGRESSION, id=1),
             Step(99, None, None, 1.0, 2.0, 2.0, REGRESSION, id=2, verdict="inconclusive")]
    history = History({}, {1: run, 2: run2}, series, points, steps)
    out = tmp_path / "site"
    result = publish(history, out)
    assert len(case_pages(out)) == 3 and len(result.written) == 6
    dead = page_for(out, "always fails").read_text()
    assert "no value measured: every point failed" in dead
    assert 'rotate(90)">skipped</text>' in dead and 'rotate(90)">error</text>' in dead
    assert "abababa (dirty)" in dead
    nan = page_for(out, "not a number").read_text()
    assert 'rotate(90)">no value</text>' in nan   # drawn as not measured, not as a number
    one = page_for(out, "one point").read_text()
    assert one.count('<circle class="stable"') == 1
    assert "regression \u00d71.4 (+40.0%) between fffffff and eeeeeee" in one  # listed, not drawn
    assert '<g class="step">' not in one
    assert 'href="../bench.json"' in one   # a pytest-benchmark file is its own report
    regressions = (out / REGRESSIONS).read_text()
    assert "series #99 (not in the history)" in regressions and "inconclusive" in regressions
    assert "machine #9 (not in the history)" in (out / INDEX).read_text()
