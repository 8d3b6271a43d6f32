"""`python -m app`: serve the store's active bundle with uvicorn (uvloop and httptools when installed)."""

import sys

from pydantic import ValidationError


def main() -> int:
    from app.settings import get_settings, settings_error

    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        return 2
    # Only now the heavy imports (torch, via the pipeline): a bad setting is refused at once.
    import uvicorn

    from app.main import create_app
    from app.server import config

    uvicorn.Server(config(create_app(settings), settings)).run()
    return 0


# Inference workers are started by multiprocessing, which imports this module again in
# each of them (as `__mp_main__`): only the real entry point may start a server.
if __name__ == "__main__":
    sys.exit(main())
