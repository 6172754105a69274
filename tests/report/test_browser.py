"""The report in a real browser (headless Debian chromium): every image loads, the console stays clean."""

from __future__ import annotations

from pathlib import Path

from report.config import ReportConfig
from report.run import run_report
from tests.see_fixtures import SeenRun, keep_screenshot


def test_the_report_opens_from_disk_with_every_image_loaded_and_no_console_error(seen_run: SeenRun, grid: Path,
                                                                                  chromium, tmp_path: Path):
    index = Path(run_report(ReportConfig(run_dir=str(seen_run.run_dir), out_dir=str(tmp_path / "report"),
                                         ablation=str(grid / "ablation.json"), device="cpu"))["index"])
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
    try:
        page.goto(index.as_uri(), wait_until="load")
        images = page.evaluate("Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
        assert len(images) > 40
        assert [src for src, complete, width in images if not complete or width == 0] == []
        plot_widths = page.evaluate("Array.from(document.querySelectorAll('img.plot'), i => i.naturalWidth)")
        assert len(plot_widths) == 3 and min(plot_widths) >= 800  # the plots are drawn large enough to read
        assert page.title().startswith("Report:")
        screenshot = tmp_path / "report_screenshot.png"
        page.screenshot(path=str(screenshot), full_page=True)
        keep_screenshot(screenshot)
    finally:
        page.close()
    assert problems == []
