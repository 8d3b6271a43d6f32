"""HTTPS, and mutual TLS with a client CA, with certificates the test makes."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from tests.utils.certs import make_pki
from tests.utils.factories import image_bytes
from tests.utils.server import LiveServer
from tests.utils.waiting import eventually

pytestmark = pytest.mark.slow

IMAGE = image_bytes(71, (96, 80))


def _context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _ready(url: str, ctx: ssl.SSLContext) -> bool:
    try:
        return httpx.get(f"{url}/readyz", verify=ctx).status_code == 200
    except httpx.TransportError:
        return False


def test_https(store, keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with LiveServer(store.root, keys[1], tls_cert_file=pki.server_cert, tls_key_file=pki.server_key) as srv:
        url = srv.url.replace("http://", "https://")
        ctx = _context(pki.ca)
        eventually(lambda: _ready(url, ctx), timeout=60, what="HTTPS readiness")
        r = httpx.post(f"{url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"}, verify=ctx)
        assert r.status_code == 200, r.text
        with pytest.raises(httpx.TransportError):  # plain HTTP is not served on the TLS port
            httpx.get(f"{srv.url}/readyz", timeout=5)
        other = make_pki(tmp_path / "other", "other")
        with pytest.raises(httpx.ConnectError):  # a client that trusts another CA refuses this server
            httpx.get(f"{url}/readyz", verify=_context(other.ca))


def test_mutual_tls_requires_a_client_certificate_from_the_ca(store, keys, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    stranger = make_pki(tmp_path / "stranger", "stranger")
    with LiveServer(
        store.root,
        keys[1],
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
        tls_client_ca_file=pki.ca,
    ) as srv:
        url = srv.url.replace("http://", "https://")
        good = _context(pki.ca, pki.client_cert, pki.client_key)
        eventually(lambda: _ready(url, good), timeout=60, what="mutual-TLS readiness")
        r = httpx.post(f"{url}/v1/predict", content=IMAGE, headers={"Content-Type": "image/jpeg"}, verify=good)
        assert r.status_code == 200, r.text
        for ctx in (_context(pki.ca), _context(pki.ca, stranger.client_cert, stranger.client_key)):
            with pytest.raises(httpx.TransportError):  # no certificate, or one another CA signed
                httpx.get(f"{url}/readyz", verify=ctx, timeout=5)


def test_tls_settings_go_together(store, keys, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    pki = make_pki(tmp_path)
    with pytest.raises(ValidationError, match="go together"):
        Settings(store=str(store.root), public_key=keys[1], tls_cert_file=pki.server_cert)
    with pytest.raises(ValidationError, match="needs APP_TLS_CERT_FILE"):
        Settings(store=str(store.root), public_key=keys[1], tls_client_ca_file=pki.ca)
