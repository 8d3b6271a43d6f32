"""Debian's Chromium driven by Playwright: headless, offline, no traffic of its own.

Playwright's own browsers cannot be downloaded here (`playwright install` is never run);
`make browser` installs /usr/bin/chromium with apt-get. The tests and
tests/console_screenshot.py launch it the same way, through `chromium()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.utils.programs import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, FilePayload

CHROMIUM = Path("/usr/bin/chromium")
# No sandbox: CI runs as root, where Chromium's sandbox refuses to start. The rest keeps a
# test run from talking to anything but the service under test.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip without Chromium on a developer's machine; fail under CI or `make test`, which install it."""
    if CHROMIUM.is_file():
        return
    missing(
        f"{CHROMIUM} is missing: `make browser` installs it (apt-get install -y chromium, as root)", "REQUIRE_BROWSER"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def upload(name: str, mime_type: str, data: bytes) -> FilePayload:
    """A file for `page.set_input_files`, as if the operator picked it from disk."""
    return {"name": name, "mimeType": mime_type, "buffer": data}
