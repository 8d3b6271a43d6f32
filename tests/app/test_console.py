"""The ops console (GET /console) in a real headless Chromium against `python -m app` on
127.0.0.1: what an operator sees and does, and what the page must never do (load anything
from another host, run inline script, keep the token)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from model_store import activation
from model_store import estimate as est
from model_store import monitoring as mon
from model_store.receipts import ReceiptKeys, verify
from model_store.signing import generate_keypair
from model_store.store import FilesystemStore
from tests.utils.browser import chromium, require_chromium, upload
from tests.utils.deploy import ROOT
from tests.utils.factories import make_monitored_bundle, parcel_photo
from tests.utils.server import ADMIN_TOKEN, ServiceProcess, admin
from tests.utils.waiting import eventually

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

ASSETS = ROOT / "app" / "edge" / "console"
SWAP_S = 60  # seconds an activation may take on a busy machine: verify, load, parity
WAIT_MS = SWAP_S * 1000


@pytest.fixture(scope="module")
def console_store(tmp_path_factory: pytest.TempPathFactory, keys, bundles) -> FilesystemStore:
    """m1 (active; its bundle carries a monitoring reference, so drift has charts) and v2."""
    root = tmp_path_factory.mktemp("console")
    reference = [parcel_photo(seed) for seed in range(60)]
    store = FilesystemStore(root / "store", keys[1])
    store.import_bundle(make_monitored_bundle(root / "m1", keys[0], "m1", reference).path, actor="fixture")
    store.import_bundle(bundles["v2"], actor="fixture")
    activation.activate(store, "m1", actor="fixture", reason="first model")
    return store


@pytest.fixture(scope="module")
def receipt_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("console-receipt-keys"))


@pytest.fixture(scope="module")
def service(
    console_store: FilesystemStore, keys, receipt_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    env = {
        "APP_STORE": str(console_store.root),
        "APP_PUBLIC_KEY": str(keys[1]),
        "APP_ADMIN_TOKEN": ADMIN_TOKEN,
        "APP_RECEIPT_KEY": str(receipt_keys[0]),  # receipts on: try-an-image shows the answer's
        "APP_WORKERS": "1",
        "APP_FOLLOW_INTERVAL_S": "0",
    }
    with ServiceProcess(env, tmp_path_factory.mktemp("console-log") / "service.log") as proc:
        proc.wait_ready()
        yield proc.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with chromium() as b:
        yield b


@dataclass
class Seen:
    """What the page did besides rendering: console errors, uncaught exceptions, requests."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def open_console(browser: Browser, url: str) -> tuple[Page, Seen]:
    page = browser.new_page()
    seen = Seen()
    page.on("console", lambda msg: seen.errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.errors.append(f"uncaught: {exc}"))
    page.on("request", lambda req: seen.requests.append(req.url))
    page.goto(f"{url}/console")
    return page, seen


def use_token(page: Page, token: str, who: str = "") -> None:
    page.fill("#token", token)
    page.fill("#actor", who)
    page.click("#auth button[type=submit]")


def other_version(store: FilesystemStore) -> str:
    return "v2" if store.active_version() == "m1" else "m1"


@pytest.mark.slow
def test_the_page_loads_offline_with_no_errors_and_shows_the_active_version(service, browser, console_store) -> None:
    page, seen = open_console(browser, service)
    try:
        page.locator("#serving-version", has_text=str(console_store.active_version())).wait_for()
        assert page.text_content("#serving-state .badge") == "ready"
        # Without a token the management parts say what they need instead of failing.
        assert "Enter the management token" in (page.text_content("#versions-body") or "")
        page.wait_for_load_state("networkidle")
    finally:
        page.close()
    assert seen.errors == []  # a CSP violation (inline script, another host) shows up here too
    assert seen.requests, "the page made no requests at all"
    elsewhere = [u for u in seen.requests if not u.startswith(f"{service}/") and not u.startswith("data:")]
    assert elsewhere == []


@pytest.mark.slow
def test_activate_and_roll_back_from_the_page_reach_the_audit_log(service, browser, console_store) -> None:
    before, target = console_store.active_version(), other_version(console_store)
    reason = f"console test: {target} passed review"
    page, seen = open_console(browser, service)
    try:
        use_token(page, ADMIN_TOKEN, who="kim")
        # The operator checks the stored version's parity first, from its row.
        row = page.locator(f'#versions-table tr[data-version="{target}"]')
        row.get_by_role("button", name="Check parity").click()
        row.locator("td.parity .badge", has_text="passed").wait_for(timeout=WAIT_MS)
        page.fill("#change-version", target)
        page.fill("#change-reason", reason)
        page.click("#activate")
        page.locator("#change-result .success").wait_for(timeout=WAIT_MS)
        assert f"now serving {target}" in (page.text_content("#change-result") or "")
        entry = console_store.audit_log()[-1]
        assert (entry.action, entry.to_version, entry.reason) == ("activate", target, reason)
        assert entry.actor.startswith("kim@127.0.0.1")
        assert httpx.get(f"{service}/v1/audit", headers=admin()).json()[-1]["reason"] == reason
        # The page refreshes itself: the audit table and the serving panel show the change.
        page.locator("#audit-table td", has_text=reason).wait_for()
        page.locator("#serving-version", has_text=target).wait_for()

        page.fill("#change-reason", "console test: back")
        page.click("#rollback")
        page.locator("#change-result .success", has_text=f"now serving {before}").wait_for(timeout=WAIT_MS)
        entry = console_store.audit_log()[-1]
        assert (entry.action, entry.from_version, entry.to_version) == ("rollback", target, before)
        assert entry.reason == "console test: back"

        # The token was typed in and stays in a variable: not in the field, storage, cookies or URL.
        left = page.evaluate("() => [document.getElementById('token').value, localStorage.length, "
                             "sessionStorage.length, document.cookie, location.href]")  # fmt: skip
        assert left == ["", 0, 0, "", f"{service}/console"]
    finally:
        page.close()
    assert seen.errors == []
    assert console_store.active_version() == before


@pytest.mark.slow
def test_a_missing_or_wrong_token_shows_the_error_and_changes_nothing(service, browser, console_store) -> None:
    before = (console_store.active_version(), len(console_store.audit_log()))
    page, _ = open_console(browser, service)
    try:
        page.fill("#change-version", other_version(console_store))
        page.fill("#change-reason", "no token")
        page.click("#activate")
        page.locator("#change-result .error").wait_for(timeout=WAIT_MS)
        shown = page.text_content("#change-result") or ""
        assert "401 unauthorized" in shown and "send Authorization: Bearer" in shown

        use_token(page, "wrong-token-0123456789")
        page.locator("#versions-body .error").wait_for()
        assert "invalid bearer token" in (page.text_content("#versions-body") or "")
        assert "token refused" in (page.text_content("#auth-state") or "")
        page.fill("#change-reason", "wrong token")
        page.click("#activate")
        page.locator("#change-result .error", has_text="invalid bearer token").wait_for(timeout=WAIT_MS)
        assert "401 unauthorized" in (page.text_content("#change-result") or "")
    finally:
        page.close()
    assert (console_store.active_version(), len(console_store.audit_log())) == before


@pytest.mark.slow
def test_try_an_image_shows_the_decision_the_service_gives(service, browser, receipt_keys, tmp_path: Path) -> None:
    image = parcel_photo(7)
    expected = httpx.post(f"{service}/v1/predict", content=image, headers={"Content-Type": "image/jpeg"}).json()
    result = expected["results"][0]
    page, seen = open_console(browser, service)
    try:
        page.set_input_files("#try-file", files=[upload("parcel.jpg", "image/jpeg", image)])
        page.click("#try-form button[type=submit]")
        page.locator("#try-decision").wait_for(timeout=WAIT_MS)
        assert page.text_content("#try-decision") == result["decision"]
        assert page.text_content("#try-probability") == f"{result['probability']:.4f}"
        # The answer's signed receipt, as a claims desk would copy it: it verifies.
        receipt = verify(page.input_value("#try-receipt"), ReceiptKeys.load(receipt_keys[1]))
        assert (receipt.probability, receipt.decision, receipt.station) == (
            result["probability"],
            result["decision"],
            "console",
        )
        # Then where the evidence lies: the explanation's overlay, drawn by the browser (CSP allows data: images).
        page.locator("#try-overlay").wait_for(timeout=WAIT_MS)
        page.wait_for_function("document.getElementById('try-overlay').complete", timeout=WAIT_MS)
        size = page.eval_on_selector("#try-overlay", "img => [img.naturalWidth, img.naturalHeight]")
        assert size == [160, 120]  # the photo as sent, under 512 pixels: its own size
        assert f"Probability {result['probability']:.4f}" in (page.text_content("#try-explain") or "")
        # Not an image: the service's 4xx, shown as it came.
        page.set_input_files("#try-file", files=[upload("notes.txt", "text/plain", b"hi")])
        page.click("#try-form button[type=submit]")
        page.locator("#try-result .error").wait_for(timeout=WAIT_MS)
        assert re.search(r"\b4\d\d\b", page.text_content("#try-result") or "")
    finally:
        page.close()
    assert [e for e in seen.errors if "status of 4" not in e] == []  # the refused upload logs its 4xx


@pytest.mark.slow
def test_drift_charts_and_the_quality_estimate_render_for_a_station_after_its_predictions(service, browser) -> None:
    darker = [parcel_photo(5000 + i, brightness=0.45) for i in range(mon.MIN_IMAGES)]
    with httpx.Client(base_url=service, timeout=60) as c:
        if c.get("/readyz").json()["version"] != "m1":  # the version with a monitoring reference
            assert c.post("/v1/models/m1/activate", headers=admin(), timeout=SWAP_S).status_code == 200
        for img in darker:
            headers = {"Content-Type": "image/jpeg", "X-Station-ID": "dock-7"}
            assert c.post("/v1/predict", content=img, headers=headers).status_code == 200
    page, seen = open_console(browser, service)
    try:
        use_token(page, ADMIN_TOKEN)
        card = page.locator('article.station[data-station="dock-7"]')
        card.wait_for()
        assert "alarm" in (card.locator("h3").text_content() or "")
        assert "brightness" in (card.locator("h3").text_content() or "")
        bars = card.locator("svg.psi rect.bar")
        stations = httpx.get(f"{service}/v1/monitoring", headers=admin()).json()["stations"]
        drift = next(s for s in stations if s["station"] == "dock-7")["drift"]
        assert bars.count() == len(drift) > 0  # one bar per feature
        assert card.locator("svg.psi rect.bar.bad").count() >= 1  # brightness, drawn as an alarm
        assert card.locator("svg.hist").count() == len(drift)  # reference vs live, per feature
        # The quality estimated without labels: a row per figure, the API's numbers.
        estimate = next(s for s in stations if s["station"] == "dock-7")["estimate"]
        assert card.locator(".quality tr[data-figure]").count() == len(est.FIGURES)
        cost = card.locator('.quality tr[data-figure="cost_per_parcel"]').text_content() or ""
        low, high = estimate["intervals"]["cost_per_parcel"]
        assert f"{estimate['figures']['cost_per_parcel']:.3f}" in cost and f"{low:.3f} to {high:.3f}" in cost
        # This station's photos are darker than the validated ones: its estimate says not to trust it.
        assert "brightness" in (card.locator(".quality .error").text_content() or "")
        # Whose windows these are: this replica, live (the fleet's others when there are any).
        replica = httpx.get(f"{service}/v1/monitoring", headers=admin()).json()["replica"]
        assert "live" in (page.locator(f'.fleet tr[data-replica="{replica}"]').text_content() or "")
    finally:
        page.close()
    assert seen.errors == []


@pytest.mark.slow
def test_the_canary_shows_its_stations_and_its_comparison_with_the_active_version(
    service, browser, console_store
) -> None:
    candidate = other_version(console_store)
    with httpx.Client(base_url=service, timeout=60, headers=admin()) as c:
        policy = {"policy": {"min_images": 200}, "reason": "console test"}
        assert c.put("/v1/canary/policy", json=policy).status_code == 200
        body = {"version": candidate, "stations": ["dock-9"], "reason": "console test"}
        assert c.put("/v1/canary", json=body, timeout=SWAP_S).status_code == 200
        for seed in range(3):
            headers = {"Content-Type": "image/jpeg", "X-Station-ID": "dock-9"}
            assert c.post("/v1/predict", content=parcel_photo(7000 + seed), headers=headers).status_code == 200
        # The active version scores the same images after each answer: wait for all three.
        eventually(lambda: [r["images"] for r in c.get("/v1/canary").json()["comparisons"]] == [3], what="compared")
    page, seen = open_console(browser, service)
    try:
        use_token(page, ADMIN_TOKEN)
        page.locator("#canary-version", has_text=candidate).wait_for()
        text = page.text_content("#canary-body") or ""
        assert "dock-9" in text and str(console_store.active_version()) in text
        row = page.locator('#canary-table tr[data-station="dock-9"]')
        row.wait_for()
        assert row.locator("td").nth(1).text_content() == "3"  # images compared
        # What `canary check` would decide: this replica writes no summaries here, so the
        # fleet's evidence holds none of dock-9's images yet, and the policy waits.
        verdict = page.locator("#canary-verdict", has_text="Policy verdict: wait")
        verdict.wait_for()
        assert "dock-9: 0 of 200 images" in (verdict.text_content() or "")
        page.locator('#canary-evidence tr[data-station="dock-9"]').wait_for()
        # The audit log shows the canary's start next to the activations.
        page.locator("#audit-table td", has_text="[stations dock-9] console test").wait_for()
    finally:
        page.close()
        assert httpx.request("DELETE", f"{service}/v1/canary", headers=admin()).status_code == 200
    assert seen.errors == []


@pytest.mark.slow
def test_the_page_is_sent_with_a_strict_csp_and_references_no_other_host(service) -> None:
    r = httpx.get(f"{service}/console")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split(";") if d.strip()}
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]  # no 'unsafe-inline', no other origin
    assert csp["frame-ancestors"] == ["'none'"]
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script> (the CSP would block it)"
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler (the CSP would block it)"
    assert not re.search(r"\sstyle\s*=", html), "inline style attribute (the CSP would block it)"
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith("/console/") or link.startswith("data:") for link in links), links
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        asset = httpx.get(f"{service}/console/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        assert asset.headers["x-content-type-options"] == "nosniff"
        # The SVG namespace is a name, not a request; any other URL would be one.
        assert re.findall(r"https?://[^\s\"'`)]+", asset.text) in ([], ["http://www.w3.org/2000/svg"]), name
    assert httpx.get(f"{service}/console/secrets.txt").status_code == 404


def test_every_console_file_is_shipped_in_the_wheel_and_the_image() -> None:
    import tomllib
    from fnmatch import fnmatch

    from tests.utils.deploy import dockerignore_excludes

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app.edge"]
    files = sorted(p.relative_to(ROOT / "app" / "edge").as_posix() for p in ASSETS.iterdir())
    assert files and all(any(fnmatch(f, pat) for pat in patterns) for f in files), (files, patterns)
    ignore = (ROOT / ".dockerignore").read_text()
    assert not [f for f in files if dockerignore_excludes(ignore, f"app/edge/{f}")]  # the Dockerfile copies app/
