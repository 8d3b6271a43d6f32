"""`python -m model_store`: keys, bundle verification, and the store's versions and pointer.

Exit codes: 0 success, 1 refused (one line on stderr saying why), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from model_store.argparsing import ArgumentParser, program
from model_store.errors import ModelStoreError
from model_store.store.base import default_actor

if TYPE_CHECKING:
    from model_store.store.base import AuditEntry, Store

ENV_STORE = "MODEL_STORE"
ENV_PUBLIC_KEY = "MODEL_STORE_PUBLIC_KEY"


def _common_options(p: argparse.ArgumentParser, *, top_level: bool) -> None:
    """Options accepted before or after the command.

    Only the top level holds defaults; on subcommands they are SUPPRESSed so an option
    given before the command is not overwritten by the subcommand's unset one.
    """

    def default(value: object) -> object:
        return value if top_level else argparse.SUPPRESS

    p.add_argument(
        "--store",
        default=default(os.environ.get(ENV_STORE)),
        help=f"store: a directory or s3://bucket/prefix (env {ENV_STORE})",
    )
    p.add_argument(
        "--public-key",
        type=Path,
        default=default(os.environ.get(ENV_PUBLIC_KEY)),
        help=f"trusted public key PEM, or a directory of them (*.pem: any one may have signed) (env {ENV_PUBLIC_KEY})",
    )
    p.add_argument("--actor", default=default(default_actor()), help="who, for the audit log")
    p.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")


class _SubParsers:
    """add_subparsers() whose every command also takes the common options."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self._common = ArgumentParser(add_help=False)
        _common_options(self._common, top_level=False)
        self._sub = parser.add_subparsers(dest="command", required=True)

    def add_parser(self, name: str, *, help: str) -> argparse.ArgumentParser:
        return self._sub.add_parser(name, help=help, parents=[self._common])


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=program("model_store"), description=__doc__.splitlines()[0])
    _common_options(p, top_level=True)
    sub = _SubParsers(p)

    k = sub.add_parser("keygen", help="write private.pem (0600) and public.pem, EC P-256")
    k.add_argument("--out", type=Path, required=True)

    v = sub.add_parser("verify", help="verify a bundle directory")
    v.add_argument("bundle", type=Path)

    sub.add_parser("init", help="create an empty store (import creates one too; nothing else does)")

    i = sub.add_parser("import", help="verify a bundle and add it to the store (creating the store)")
    i.add_argument("bundle", type=Path)
    i.add_argument("--reason", default="")

    sub.add_parser("list", help="versions in the store; * marks the active one")
    s = sub.add_parser("show", help="a version's verified manifest")
    s.add_argument("version")

    a = sub.add_parser("activate", help="verify, pass parity, then point the store at VERSION")
    a.add_argument("version")
    a.add_argument("--reason", default="")

    r = sub.add_parser("rollback", help="re-activate the previously active version")
    r.add_argument("--reason", default="")

    sh = sub.add_parser("shadow", help="score a share of live traffic with a stored version, answering nothing")
    sh.add_argument("version", nargs="?", help="the version to put in shadow")
    sh.add_argument("--fraction", type=float, default=0.1, help="share of predict requests it sees (0-1]")
    sh.add_argument("--off", action="store_true", help="stop shadowing")
    sh.add_argument("--reason", default="")

    rv = sub.add_parser("revoke", help="mark a version as known bad: never activated, rolled back to or served again")
    rv.add_argument("version")
    rv.add_argument("--reason", required=True, help="why (kept in the audit log and shown on every refusal)")
    rv.add_argument("--undo", action="store_true", help="un-revoke it (audited too)")

    sub.add_parser("log", help="the audit log")
    return p


def _store(args: argparse.Namespace) -> Store:
    from model_store.store import open_store  # torch-heavy; keygen does without it

    if not args.store:
        raise SystemExit(_usage(f"this command needs --store DIR or s3://bucket/prefix (or env {ENV_STORE})"))
    return open_store(args.store, args.public_key)


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _print_entry(e: AuditEntry, as_json: bool) -> None:
    e = e.shown()  # never raw caller text on a terminal
    if as_json:
        print(json.dumps(e.to_dict()))
    else:
        print(
            f"{e.seq:>5}  {e.time}  {e.actor:<24} {e.action:<9} "
            f"{e.from_version or '-'} -> {e.to_version or '-'}  {e.reason}"
        )


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "keygen":
        from model_store.signing import generate_keypair

        private, public = generate_keypair(args.out)
        print(f"wrote {private} (mode 0600, keep it secret) and {public}")
        return 0
    if cmd in ("verify", "import", "show", "activate", "rollback") and args.public_key is None:
        return _usage(f"{cmd} verifies signatures: give --public-key PEM (or env {ENV_PUBLIC_KEY})")
    if cmd == "verify":
        from model_store.bundle import load_bundle

        bundle = load_bundle(args.bundle, args.public_key)
        print(f"OK: {bundle.manifest.name} {bundle.version} verified (manifest sha256 {bundle.manifest_sha256})")
        return 0

    store = _store(args)
    if cmd == "init":
        created = store.init()
        print(
            f"created an empty model store at {store.location}"
            if created
            else f"{store.location}: already a model store"
        )
    elif cmd == "import":
        result = store.import_bundle(args.bundle, actor=args.actor, reason=args.reason)
        state = "imported" if result.created else "already present (identical), nothing to do"
        print(f"{result.version}: {state}")
    elif cmd == "list":
        infos = store.versions()
        if args.json:
            print(json.dumps([vars(i) for i in infos], indent=2))
        elif not infos:
            print("no versions in the store")
        shadow = store.shadow() if infos else None
        revoked = store.revoked() if infos else {}
        for i in infos if not args.json else []:
            mark = "*" if i.active else " "
            note = f"  shadow on {shadow.fraction:.0%} of traffic" if shadow and shadow.version == i.version else ""
            note += "  REVOKED" if i.version in revoked else ""
            print(f"{mark} {i.version:<20} {i.name:<24} {i.created_at}  {i.manifest_sha256[:12]}{note}")
    elif cmd == "show":
        print(store.manifest(args.version).to_json_bytes().decode(), end="")
    elif cmd == "activate":
        from model_store import activation  # the Predictor: torch loads only when needed

        e = activation.activate(store, args.version, actor=args.actor, reason=args.reason)
        print(f"active: {e.to_version} (was {e.from_version or 'none'}); parity passed")
    elif cmd == "rollback":
        from model_store import activation

        e = activation.rollback(store, actor=args.actor, reason=args.reason)
        print(f"rolled back: active {e.to_version} (was {e.from_version}); parity passed")
    elif cmd == "shadow":
        if args.off == (args.version is not None):
            return _usage("give a VERSION to put in shadow, or --off")
        e = store.set_shadow(None if args.off else args.version, fraction=args.fraction, actor=args.actor,
                             reason=args.reason)  # fmt: skip
        print(f"shadow: {e.to_version or 'none'} (was {e.from_version or 'none'}); replicas pick it up as they follow")
    elif cmd == "revoke":
        e = store.revoke(args.version, actor=args.actor, reason=args.reason, undo=args.undo)
        if args.undo:
            print(f"{e.to_version}: no longer revoked; it may be activated again")
        else:
            print(f"revoked: {e.to_version}; activate, rollback and every replica following the store refuse it")
    elif cmd == "log":
        for e in store.audit_log():
            _print_entry(e, args.json)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ModelStoreError, OSError) as exc:  # OSError: a path that is missing, not a directory, not ours
        print(f"error: {exc}", file=sys.stderr)
        return 1
