"""`python -m app` (or `damage-serve`): serve the store's active bundle with uvicorn (uvloop and httptools)."""

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic.fields import FieldInfo


def _help(field: FieldInfo) -> str:
    default = field.get_default(call_default_factory=False)
    shown = "" if field.is_required() or field.default_factory or default is None else f" (default {default})"
    return f"{field.description or ''}{shown}".strip()


def build_parser() -> argparse.ArgumentParser:
    from app.settings import Settings
    from model_store.argparsing import ArgumentParser, program

    # Everything is configured by the environment (one Settings class, as in containers);
    # --help lists it so nobody has to open the source to find a variable's name.
    variables = "\n".join(
        f"  APP_{name.upper():<26} {_help(field)}".rstrip() for name, field in Settings.model_fields.items()
    )
    parser = ArgumentParser(
        prog=program("app"),
        description=__doc__.splitlines()[0],
        epilog=f"settings, from environment variables (APP_STORE and APP_PUBLIC_KEY are required):\n{variables}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command=None)
    commands = parser.add_subparsers(dest="command", metavar="{stations}")
    stations = commands.add_parser("stations", help="station tokens (APP_STATION_TOKENS_FILE)")
    stations_do = stations.add_subparsers(dest="action", required=True)
    add = stations_do.add_parser("add", help="print a new token for a station once, and append its line to the file")
    add.add_argument("station", help="the station's ID: 1-64 of A-Z a-z 0-9 . _ -")
    add.add_argument("--file", type=Path, required=True, help="the station tokens file (created if missing)")
    return parser


def _add_station(station: str, path: Path) -> int:
    from app.edge.stations import TokensFileInvalid, add_station

    try:
        token = add_station(path, station)
    except (OSError, UnicodeDecodeError, TokensFileInvalid) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"{station}: token added to {path} (only its sha256 is kept; it is not shown again)", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from app.settings import get_settings, settings_error

    args = build_parser().parse_args(argv)
    if args.command == "stations":
        return _add_station(args.station, args.file)
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        return 2
    # Only now the heavy imports (torch, via the pipeline): a bad setting is refused at once.
    import uvicorn

    from app.edge.server import StartupRefused, config
    from app.edge.stations import StationTokens, TokensFileInvalid
    from app.main import create_app

    try:
        if settings.station_tokens_file is not None:
            StationTokens.load(settings.station_tokens_file)  # a file that does not load stops startup
        server_config = config(create_app(settings), settings)
    except (OSError, UnicodeDecodeError, TokensFileInvalid) as exc:
        print(f"error: APP_STATION_TOKENS_FILE {settings.station_tokens_file}: {exc}", file=sys.stderr)
        return 2
    except StartupRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # What exists now (the imports: torch, pydantic, the framework; the app) lives as long as
    # the process: out of the collector's sight, its collections cost the front process about
    # a fifth of what they did (measured at 256 clients: 0.07 of a core -> 0.014).
    gc.collect()
    gc.freeze()
    uvicorn.Server(server_config).run()
    return 0


# Inference workers are started by multiprocessing, which imports this module again in
# each of them (as `__mp_main__`): only the real entry point may start a server.
if __name__ == "__main__":
    sys.exit(main())
