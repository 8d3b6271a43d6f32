"""The README's screenshot of the ops console, taken from a real service. It is built from
the test helpers (signed bundles, the service process, the browser), so it lives with them.

    .venv/bin/python -m tests.console_screenshot            # writes docs/img/console.png

Builds three signed bundles with monitoring references in a temporary store, starts
`python -m app` on 127.0.0.1, makes an audit log (activations, a shadow), sends traffic from
three stations (one healthy, one with a darkened camera, one switched to a lower resolution),
then opens /console in headless Chromium (as the tests do), types the token in, tries an
image and saves the whole page.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

import httpx

from model_store import activation
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.browser import CHROMIUM, chromium, upload
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ServiceProcess

ROOT = Path(__file__).resolve().parents[1]

VERSIONS = ("2026.10.2", "2026.11.1", "2026.11.2")


def build_store(work: Path) -> tuple[FilesystemStore, Path]:
    private, public = generate_keypair(work / "keys")
    reference = [parcel_photo(seed) for seed in range(120)]
    store = FilesystemStore(work / "store", public)
    for version in VERSIONS:
        bundle = make_monitored_bundle(work / "bundles" / version, private, version, reference)
        store.import_bundle(bundle.path, actor="ci@build-7", reason="published by the training pipeline")
    activation.activate(store, VERSIONS[0], actor="kim@ops-laptop", reason="first model for the Leeds hub")
    activation.activate(store, VERSIONS[1], actor="kim@ops-laptop", reason="retrained with October's inspections")
    return store, public


def traffic(url: str, token: str) -> None:
    auth = {"Authorization": f"Bearer {token}", "X-Actor": "sam"}
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.put("/v1/shadow", headers=auth, json={"version": VERSIONS[2], "fraction": 0.5, "reason": "canary"})
        r.raise_for_status()
        stations = {
            "dock-1": [parcel_photo(1000 + i) for i in range(120)],
            "dock-2": [parcel_photo(2000 + i, brightness=0.5) for i in range(60)],
            "dock-3": [parcel_photo(3000 + i, size=(96, 72)) for i in range(60)],
            "dock-4": [parcel_photo(4000 + i) for i in range(12)],
        }
        for station, images in stations.items():
            for image in images:
                headers = {"Content-Type": "image/jpeg", "X-Station-ID": station}
                c.post("/v1/predict", content=image, headers=headers).raise_for_status()


def screenshot(url: str, token: str, out: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.goto(f"{url}/console")
        page.fill("#token", token)
        page.fill("#actor", "kim")
        page.click("#auth button[type=submit]")
        page.locator('article.station[data-station="dock-2"]').wait_for(timeout=60_000)
        page.locator("#audit-table").wait_for()
        page.set_input_files("#try-file", files=[upload("parcel.jpg", "image/jpeg", parcel_photo(3))])
        page.click("#try-form button[type=submit]")
        page.locator("#try-decision").wait_for(timeout=60_000)
        page.click("#run-parity")
        page.locator("#parity-result .badge").wait_for(timeout=60_000)
        page.fill("#change-version", VERSIONS[2])
        page.fill("#change-reason", "canary agrees on 99% of images")
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="The README's screenshot of the ops console, from a real service.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "console.png")
    args = parser.parse_args()
    if not CHROMIUM.is_file():
        print(f"error: {CHROMIUM} is missing: run `make browser`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="console-shot-") as tmp:
        work = Path(tmp)
        store, public = build_store(work)
        token = secrets.token_urlsafe(24)
        env = {
            "APP_STORE": str(store.root),
            "APP_PUBLIC_KEY": str(public),
            "APP_ADMIN_TOKEN": token,
            "APP_WORKERS": "1",
            "APP_FOLLOW_INTERVAL_S": "0",
        }
        with ServiceProcess(env, work / "service.log") as service:
            service.wait_ready()
            traffic(service.url, token)
            screenshot(service.url, token, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
