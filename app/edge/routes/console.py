"""GET /console: the ops console, a static page shipped as package data (app/edge/console/).

Nothing is rendered on the server: the page is the same bytes for everyone and calls the
service's own API from the browser. Read-only parts use what needs no token (`/readyz`,
`/v1/parity`, `/v1/predict`); management calls carry the token the operator types in, which
the page keeps in a JavaScript variable only. So serving the page itself needs no token.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response

from app.edge.errors import APIError

# Read once at import: a wheel or image built without the assets fails `import app.main`
# (the Dockerfile's build step runs it) instead of serving a broken page.
_ASSETS = {
    name: ((files("app.edge") / "console" / name).read_bytes(), media_type)
    for name, media_type in (
        ("index.html", "text/html; charset=utf-8"),
        ("console.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
    )
}

# Only this origin's own files and API: no inline script or style (an injected string can
# never run), no plugins, no framing (nobody can overlay the activate button on their page).
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # data: for the empty favicon, which saves a 404 per load
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded service serves its own page
}

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)


def _asset(name: str) -> Response:
    body, media_type = _ASSETS[name]
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("")
async def console() -> Response:
    return _asset("index.html")


@router.get("/{name}")
async def asset(name: str) -> Response:
    if name not in _ASSETS or name == "index.html":
        raise APIError(404, "not_found", f"the console has no file {name!r}")
    return _asset(name)
