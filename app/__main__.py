"""`python -m app`: serve the store's active bundle with uvicorn."""

import sys

import uvicorn
from pydantic import ValidationError

from app.main import create_app
from app.settings import get_settings, settings_error


def main() -> int:
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning", access_log=False)
    return 0


sys.exit(main())
