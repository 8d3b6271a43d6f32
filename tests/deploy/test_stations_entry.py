"""The stations' HTTPS entry as compose runs it, end to end: HAProxy with the shipped
deploy/haproxy.cfg and deploy/haproxy-tls.cfg (only addresses and paths changed) in front
of the real service with a station tokens file, a certificate from a private CA, and the
replicas' FORWARDED_ALLOW_IPS from docker-compose.yml."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from app.edge.stations import add_station
from model_store import activation
from model_store.store import FilesystemStore
from tests.utils.certs import Pki, make_pki
from tests.utils.deploy import COMPOSE_REQUIRED, ROOT, load_compose
from tests.utils.factories import image_bytes
from tests.utils.haproxy import Haproxy, free_port, localise, require_haproxy
from tests.utils.server import ADMIN_TOKEN, LiveServer, admin

pytestmark = pytest.mark.slow

IMAGE = image_bytes(24, (96, 80))
SITE_PEM = "/usr/local/etc/haproxy/tls/site.pem"  # where compose.tls.yml mounts the certificate
CLIENT_CA = "/usr/local/etc/haproxy/tls/client-ca.pem"


@dataclass
class Fleet:
    tls: str  # https://127.0.0.1:port, the stations' entry
    plain: str  # http://127.0.0.1:port, the operators' entry
    pki: Pki
    dock1: str
    dock2: str
    root: Path
    backend: int
    tls_port: int


def _configs(fleet_root: Path, backend: int, plain_port: int, tls_port: int, tls_text: str) -> list[Path]:
    plain = localise(
        (ROOT / "deploy" / "haproxy.cfg").read_text(),
        {
            "bind :8080": f"bind 127.0.0.1:{plain_port}",
            "server-template api 10 api:8000": f"server api 127.0.0.1:{backend}",  # Docker's DNS is not here
            " resolvers docker resolve-prefer ipv4 init-addr none": "",
        },
    )
    tls = localise(tls_text, {"bind :8443": f"bind 127.0.0.1:{tls_port}", SITE_PEM: str(fleet_root / "site.pem")})
    paths = [fleet_root / f"haproxy-{tls_port}.cfg", fleet_root / f"tls-{tls_port}.cfg"]
    paths[0].write_text(plain)
    paths[1].write_text(tls)
    return paths


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keys, bundles) -> Iterator[Fleet]:
    require_haproxy()
    root = tmp_path_factory.mktemp("fleet")
    store = FilesystemStore(root / "store", keys[1])
    store.import_bundle(bundles["v1"], actor="fixture")
    activation.activate(store, "v1", actor="fixture")
    tokens = root / "stations.txt"
    dock1, dock2 = add_station(tokens, "dock-1"), add_station(tokens, "dock-2")
    pki = make_pki(root)
    (root / "site.pem").write_bytes(pki.server_cert.read_bytes() + pki.server_key.read_bytes())  # HAProxy's format
    # What the replicas trust in compose, where HAProxy is another container (uvicorn's own
    # default, loopback, would trust this test's proxy whatever compose says).
    compose = load_compose(ROOT / "docker-compose.yml", COMPOSE_REQUIRED)
    trusted = compose["services"]["api"]["environment"].get("FORWARDED_ALLOW_IPS", "")
    plain_port, tls_port = free_port(), free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORWARDED_ALLOW_IPS", trusted)  # read by uvicorn when LiveServer configures it
        server = LiveServer(store.root, keys[1], admin_token=ADMIN_TOKEN, station_tokens_file=tokens)
    with server as srv:
        srv.wait_ready()
        configs = _configs(root, srv.port, plain_port, tls_port, (ROOT / "deploy" / "haproxy-tls.cfg").read_text())
        with Haproxy(configs, [plain_port, tls_port], root / "haproxy.log"):
            tls, plain = f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{plain_port}"
            yield Fleet(tls, plain, pki, dock1, dock2, root, srv.port, tls_port)


def _trusting(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _predict(client: httpx.Client, url: str, token: str | None = None, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "image/jpeg", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return client.post(f"{url}/v1/predict", content=IMAGE, headers=sent, timeout=60)


def test_a_station_with_its_token_is_served_over_https_and_nothing_without_tls_trust_or_token(fleet: Fleet) -> None:
    with httpx.Client(verify=_trusting(fleet.pki.ca)) as client:
        r = _predict(client, fleet.tls, fleet.dock1)
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["decision"] in {"damaged", "intact"}
        r = _predict(client, fleet.tls)  # through the proxy, refused by the service
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        r = _predict(client, fleet.tls, fleet.dock1, **{"X-Station-ID": "dock-2"})
        assert r.status_code == 403 and r.json()["error"] == "station_mismatch", r.text
    with pytest.raises(httpx.TransportError):  # plain HTTP is not spoken on the TLS port
        _predict(httpx.Client(), fleet.tls.replace("https://", "http://"), fleet.dock1)
    other = make_pki(fleet.root / "other", "other")
    with pytest.raises(httpx.ConnectError), httpx.Client(verify=_trusting(other.ca)) as client:
        _predict(client, fleet.tls, fleet.dock1)  # a station that trusts another CA never sends its token


def test_a_triton_client_infers_over_https_with_its_station_token(fleet: Fleet) -> None:
    """The README's client: tritonclient over HTTPS (the proxy's certificate checked), token in a header."""
    client = triton.InferenceServerClient(
        fleet.tls.removeprefix("https://"), ssl=True, ssl_options={"ca_certs": str(fleet.pki.ca)}
    )
    try:
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([IMAGE], dtype=np.object_), binary_data=True)
        result = client.infer("parcel-damage", [image], headers={"Authorization": f"Bearer {fleet.dock2}"})
        assert result.as_numpy("probability").shape == (1,)
        with pytest.raises(triton.InferenceServerException, match="unauthorized"):
            client.infer("parcel-damage", [image])
    finally:
        client.close()


def _raw_get(fleet: Fleet, target: str) -> tuple[int, bytes]:
    """A request line sent exactly as written (httpx would resolve `..` before sending)."""
    ctx = _trusting(fleet.pki.ca)
    with (
        socket.create_connection(("127.0.0.1", fleet.tls_port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_the_stations_entry_serves_no_management_route(fleet: Fleet) -> None:
    with httpx.Client(verify=_trusting(fleet.pki.ca)) as client:
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/models/v1/activate"),
            ("GET", "/v1/audit"),
            ("GET", "/console"),
            ("GET", "/metrics"),
            ("GET", "/v1/parity"),  # runs the reference set: no work for strangers to start
            ("GET", "/v1/%6dodels"),  # decoded by the service, not by the proxy: still refused
        ]:
            r = client.request(method, f"{fleet.tls}{path}", headers=admin())
            assert r.status_code == 404 and r.json()["error"] == "not_found", (path, r.text)
        assert client.get(f"{fleet.tls}/v2/health/ready").status_code == 200  # the protocol's routes pass
    status, body = _raw_get(fleet, "/v2/../v1/models")  # passes the proxy's /v2 prefix, routes to nothing
    assert status == 404 and b"not_found" in body and b"versions" not in body
    r = httpx.get(f"{fleet.plain}/v1/models", headers=admin())  # operators' entry: 127.0.0.1 only in compose
    assert r.status_code == 200 and "v1" in r.text


def test_wrong_tokens_lock_out_only_the_station_that_sends_them(fleet: Fleet) -> None:
    """Behind the proxy every connection comes from it: unless the replicas take the client
    from X-Forwarded-For, a station with a revoked token would lock out the whole fleet."""
    ctx = _trusting(fleet.pki.ca)
    revoked = httpx.Client(transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.0.2"))
    good = httpx.Client(transport=httpx.HTTPTransport(verify=ctx, local_address="127.0.0.3"))
    with revoked, good:
        statuses = [_predict(revoked, fleet.tls, "a-revoked-token").status_code for _ in range(10)]
        assert statuses == [401] * 10
        r = _predict(revoked, fleet.tls, fleet.dock1)
        assert r.status_code == 429 and r.json()["error"] == "too_many_token_failures", r.text
        # A forwarded-for header of its own does not make it someone else: the proxy drops it.
        assert _predict(revoked, fleet.tls, fleet.dock1, **{"X-Forwarded-For": "198.51.100.7"}).status_code == 429
        assert _predict(good, fleet.tls, fleet.dock2).status_code == 200


def test_the_mutual_tls_variant_needs_a_client_certificate_from_the_ca(fleet: Fleet) -> None:
    """deploy/haproxy-tls.cfg's commented bind line, swapped in for the active one."""
    lines = (ROOT / "deploy" / "haproxy-tls.cfg").read_text().splitlines()
    [active] = [i for i, line in enumerate(lines) if line.strip().startswith("bind ")]
    [variant] = [i for i, line in enumerate(lines) if line.strip().startswith("# bind ")]
    lines[active] = "    # " + lines[active].strip()
    lines[variant] = lines[variant].replace("# bind ", "bind ", 1)
    text = localise("\n".join(lines) + "\n", {CLIENT_CA: str(fleet.pki.ca)})
    plain_port, tls_port = free_port(), free_port()
    configs = _configs(fleet.root, fleet.backend, plain_port, tls_port, text)
    stranger = make_pki(fleet.root / "stranger", "stranger")
    url = f"https://127.0.0.1:{tls_port}"
    with Haproxy(configs, [plain_port, tls_port], fleet.root / "haproxy-mtls.log"):
        with httpx.Client(verify=_trusting(fleet.pki.ca, fleet.pki.client_cert, fleet.pki.client_key)) as client:
            assert _predict(client, url, fleet.dock1).status_code == 200
        for ctx in (
            _trusting(fleet.pki.ca),
            _trusting(fleet.pki.ca, stranger.client_cert, stranger.client_key),
        ):  # no certificate, or one another CA signed: no HTTP at all
            with pytest.raises(httpx.TransportError), httpx.Client(verify=ctx) as client:
                _predict(client, url, fleet.dock1)
