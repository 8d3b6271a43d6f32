"""The argument parser of every command line here: a usage error is one line, like a refusal.

argparse prints the whole usage block before its error; in a terminal or a CI log that
buries the one line that says what was wrong, and every other refusal of ours is one
`error: ...` line. The usage stays one `--help` away.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


def program(module: str) -> str:
    """What the user typed: `damage-store` for a console command, `python -m model_store` otherwise."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("damage-") else f"python -m {module}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose usage errors are one line and exit 2 (subcommands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")
