"""The browser fixture's rule: without chromium the browser tests skip with the reason, and fail in CI."""

import pytest

from tests.see_fixtures import browser_missing


def test_a_missing_browser_skips_the_test_outside_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        browser_missing("no chromium at /usr/bin/chromium")


def test_a_missing_browser_fails_the_test_in_ci(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no chromium .*CI=true"):
        browser_missing("no chromium at /usr/bin/chromium")
