"""`python -m app`: serve the store's active bundle with uvicorn."""

import sys

import uvicorn
from pydantic import ValidationError

from app.main import create_app
from app.settings import get_settings


def main() -> int:
    try:
        settings = get_settings()
    except ValidationError as exc:
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"])
            name = f"APP_{where.upper()}" if where else "settings"
            print(f"error: {name}: {e['msg']}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


sys.exit(main())
