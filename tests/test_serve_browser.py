"""The page in a real browser: `medalign-rag serve --backend none` as a subprocess on a free loopback port, driven by
headless Chromium (Debian's package) through Playwright. A person picks a patient, asks, sees the citations, clicks
one and lands on the cited events, highlighted; and compares two strategies side by side.

Set MEDALIGN_SCREENSHOT=path to also save the screenshot there (docs/serve.png is made that way).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serve_support import make_cohort, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PATIENT = "9900000000003"  # 17 encounters, 452 events: a timeline worth scrolling
QUESTION = "What was the most recent hemoglobin A1c?"


def browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.is_file():
        message = "needs playwright and Debian's chromium (.ci/install-browser installs both)"
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must run the browser test, not skip it")
        pytest.skip(message)
    return sync_playwright


@pytest.mark.slow
def test_a_person_asks_and_clicks_through_to_the_cited_events(tmp_path):
    sync_playwright = browser_or_skip()
    cohort = make_cohort(tmp_path / "cohort")
    with running_server(cohort, tmp_path / "indexes", tmp_path / "server.log") as base_url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base_url, "data:")) else None)

            page.goto(base_url + "/")
            page.get_by_role("button", name=PATIENT).click()
            page.wait_for_selector("#encounter-list .encounter")
            assert page.locator("#encounter-list .encounter").count() == 17
            page.fill("#question", QUESTION)
            page.select_option("#strategy", "temporal")
            page.select_option("#budget", "4096")
            page.click("#ask-button")

            citations = page.locator("#citations a.citation")
            citations.first.wait_for(timeout=180_000)  # the first question builds the patient's index
            assert "backend none" in page.inner_text("#answer-text")
            assert "tokens of a 4,096-token budget" in page.inner_text("#context-summary")

            # What the API says this question cites, to check the page against.
            answer = httpx.post(f"{base_url}/api/ask", timeout=120, json={
                "patient_id": PATIENT, "question": QUESTION, "strategy": "temporal", "budget": 4096}).json()
            assert citations.count() == len(answer["citations"]) > 0

            last = citations.last  # the most recent cited encounter, far down the timeline
            encounter_id = last.get_attribute("data-encounter-id")
            last.click()
            cited_ids = answer["events_by_encounter"][encounter_id]
            first_cited = page.locator(f'.encounter[data-encounter-id="{encounter_id}"] .event.cited').first
            first_cited.wait_for()
            assert first_cited.get_attribute("data-event-id") in cited_ids
            assert first_cited.is_visible()
            box = first_cited.bounding_box()
            timeline = page.locator("#timeline-pane").bounding_box()
            assert box is not None and timeline["y"] <= box["y"] <= timeline["y"] + timeline["height"] - box["height"]
            highlighted = first_cited.evaluate("e => getComputedStyle(e).backgroundColor")
            plain = page.locator(f'.encounter[data-encounter-id="{encounter_id}"] .event:not(.cited)')
            if plain.count():
                assert highlighted != plain.first.evaluate("e => getComputedStyle(e).backgroundColor")
            marked = page.locator(f'.encounter[data-encounter-id="{encounter_id}"] .event.cited')
            assert sorted(marked.evaluate_all("items => items.map(e => e.dataset.eventId)")) == sorted(cited_ids)

            screenshot = tmp_path / "serve.png"
            page.screenshot(path=str(screenshot))
            assert screenshot.stat().st_size > 10_000
            if os.environ.get("MEDALIGN_SCREENSHOT"):
                shutil.copyfile(screenshot, os.environ["MEDALIGN_SCREENSHOT"])

            # Compare: both strategies' contexts side by side.
            page.select_option("#compare-strategy", "full")
            page.click("#compare-button")
            page.wait_for_selector("#compare-dialog[open] .compare-column")
            columns = page.locator(".compare-column h3:first-child").all_inner_texts()
            assert columns == ["temporal", "full"]
            assert all(t.strip() for t in page.locator(".compare-context").all_inner_texts())
            page.screenshot(path=str(tmp_path / "compare.png"))
            page.click("#compare-close")

            assert problems == []  # no script error, and nothing refused by the page's own CSP
            assert outside == []  # nothing fetched from anywhere but the server
        finally:
            browser.close()
