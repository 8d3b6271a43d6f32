"""`python -m model_store`: keys, bundle verification, the store's versions and pointer, and decision receipts.

Exit codes: 0 success, 1 refused (one line on stderr saying why), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model_store.argparsing import ArgumentParser, program
from model_store.errors import ModelStoreError
from model_store.store.base import default_actor

if TYPE_CHECKING:
    from model_store.receipts import Receipt
    from model_store.store.base import AuditEntry, Store

ENV_STORE = "MODEL_STORE"
ENV_PUBLIC_KEY = "MODEL_STORE_PUBLIC_KEY"
ENV_RECEIPT_KEY = "MODEL_STORE_RECEIPT_KEY"


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

    def __init__(self, parser: argparse.ArgumentParser, dest: str = "command") -> None:
        self._common = ArgumentParser(add_help=False)
        _common_options(self._common, top_level=False)
        self._sub = parser.add_subparsers(dest=dest, required=True)

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

    ca = sub.add_parser("canary", help="serve some stations with a stored version, every other with the active one")
    _canary_commands(_SubParsers(ca, dest="canary_command"))

    sub.add_parser("log", help="the audit log")

    rc = sub.add_parser("receipt", help="decision receipts: print the key, verify, replay, find the captured photo")
    _receipt_commands(_SubParsers(rc, dest="receipt_command"))
    return p


def _canary_commands(sub: _SubParsers) -> None:
    st = sub.add_parser("start", help="verify, pass parity, then make VERSION the canary (or change the running one)")
    st.add_argument("version")
    which = st.add_mutually_exclusive_group(required=True)
    which.add_argument("--stations", help="comma-separated station IDs it serves")
    which.add_argument(
        "--fraction", type=float, help="the share of stations it serves (0-1], chosen by a stable hash of the ID"
    )
    st.add_argument("--reason", default="")
    e = sub.add_parser("end", help="end the canary: its stations return to the active version")
    e.add_argument("--reason", default="")
    p = sub.add_parser("promote", help="verify, pass parity, then make the canary the active version")
    p.add_argument("--reason", default="")
    sub.add_parser("show", help="the canary: version, stations, since")
    po = sub.add_parser("policy", help="show the promotion policy, or set it (audited)")
    po.add_argument("--set", dest="policy_json", metavar="JSON", help="settings, e.g. '{\"min_images\": 200}'")
    po.add_argument("--reason", default="")
    ck = sub.add_parser(
        "check", help="judge the canary by the policy on every replica's evidence; promote, end, or wait"
    )
    ck.add_argument("--dry-run", action="store_true", help="print the verdict, change nothing")
    ck.add_argument("--capture", help="a capture store (directory or s3://...): inspectors' labels for recall")
    ck.add_argument(
        "--cost-margin", type=float, default=0.5, help="the cost alarm's margin, as the service's APP_COST_ALARM_MARGIN"
    )


def _canary(store: Store, args: argparse.Namespace) -> int:
    from model_store import activation  # the Predictor: torch loads only when needed

    cmd = args.canary_command
    if cmd == "start":
        stations = [s.strip() for s in args.stations.split(",") if s.strip()] if args.stations else []
        if args.stations is not None and not stations:
            return _usage("--stations needs at least one station ID")
        e = activation.start_canary(
            store, args.version, stations=stations, fraction=args.fraction or 0.0, actor=args.actor, reason=args.reason
        )
        canary = store.canary()
        where = canary.describe() if canary is not None and canary.seq == e.seq else "its stations"
        print(f"canary: {e.to_version} on {where} (was {e.from_version or 'none'}); parity passed")
    elif cmd == "end":
        e = store.end_canary(actor=args.actor, reason=args.reason)
        print(f"canary ended: {e.from_version}'s stations return to the active version")
    elif cmd == "promote":
        e = activation.promote_canary(store, actor=args.actor, reason=args.reason)
        print(f"promoted: active {e.to_version} (was {e.from_version or 'none'}); parity passed; the canary ended")
    elif cmd == "show":
        canary = store.canary()
        if args.json:
            print(json.dumps(canary.as_dict() if canary else None))
        elif canary is None:
            print("no canary")
        else:
            print(f"canary: {canary.version} on {canary.describe()} since {canary.since} (seq {canary.seq})")
    elif cmd == "policy":
        return _policy(store, args)
    elif cmd == "check":
        return _check(store, args)
    return 0


def _policy(store: Store, args: argparse.Namespace) -> int:
    from model_store.rollout import Policy

    if args.policy_json is not None:
        try:
            raw = json.loads(args.policy_json)
        except ValueError as exc:
            return _usage(f"--set needs a JSON object of policy settings: {exc}")
        store.set_policy(Policy.from_dict(raw).to_dict(), actor=args.actor, reason=args.reason)
    raw = store.policy()
    policy = Policy.from_dict(raw).to_dict() if raw is not None else None
    if args.json or policy is None:
        print(json.dumps(policy) if policy is not None or args.json else "no promotion policy in the store")
    else:
        print("promotion policy: " + ", ".join(f"{k}={v}" for k, v in policy.items()))
    return 0


def _check(store: Store, args: argparse.Namespace) -> int:
    from model_store import rollout_check
    from model_store.capture import open_capture

    capture = open_capture(args.capture) if args.capture else None
    checked = rollout_check.check(
        store, actor=args.actor, act=not args.dry_run, capture=capture, cost_margin=args.cost_margin
    )
    if checked is None:
        print("no canary running: nothing to check")
        return 0
    verdict, canary = checked.verdict, checked.canary
    if args.json:
        print(json.dumps({**verdict.evidence(checked.policy), "acted": checked.entry is not None}))
        return 0
    done = {"promote": "promoted to active", "end": "ended", "wait": "waiting for more evidence"}[verdict.action]
    if args.dry_run and verdict.action != "wait":
        done = f"would be {done} (dry run)"
    print(f"canary {canary.version} on {canary.describe()}: {done}")
    for reason in verdict.reasons:
        print(f"  {reason}")
    for s in verdict.stations:
        agreement = f"{s.agreement:.1%}" if s.agreement is not None else "-"
        cost = f"{s.canary_cost:.4g}" if s.canary_cost is not None else "-"
        active = f"{s.active_cost:.4g}" if s.active_cost is not None else "-"
        print(
            f"  {s.station}: {s.images} images, cost {cost} vs active {active} ({s.active_cost_source}), "
            f"agreement {agreement} on {s.compared}, alarms {', '.join(s.alarms) or 'none'}"
        )
    return 0


def _receipt_commands(sub: _SubParsers) -> None:
    receipt_help = "the receipt: a file holding it, - for stdin, or the receipt itself"
    key_help = (
        "the service's receipt public key: a PEM, the JWK set GET /v1/receipts/keys serves, or a directory of "
        f"them (*.pem, *.json; rotation: receipts of any key there verify) (env {ENV_RECEIPT_KEY})"
    )

    def receipt_key(p: argparse.ArgumentParser) -> None:
        p.add_argument("--receipt-key", type=Path, default=os.environ.get(ENV_RECEIPT_KEY), help=key_help)

    k = sub.add_parser("key", help="print a receipt key's public half as the JWK set the service serves")
    k.add_argument("key", type=Path, help="the receipt key PEM (APP_RECEIPT_KEY, or its public.pem)")
    k.add_argument("--pem", action="store_true", help="print it as a PEM instead")

    v = sub.add_parser("verify", help="check a receipt's signature and print what it states")
    v.add_argument("receipt", help=receipt_help)
    receipt_key(v)

    r = sub.add_parser(
        "replay", help="reproduce a receipt's decision bit for bit from the store, or say exactly what differs"
    )
    r.add_argument("receipt", help=receipt_help)
    r.add_argument("image", type=Path, nargs="?", help="the photo (or give --capture to take it from there)")
    r.add_argument("--capture", help="a capture store (directory or s3://...) to take the photo from, by sha256")
    r.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run the model (default cpu)")
    receipt_key(r)

    f = sub.add_parser("find", help="the captured photo a receipt (or a sha256) names")
    f.add_argument("receipt", help=f"{receipt_help}; or an image sha256")
    f.add_argument("--capture", required=True, help="the capture store: a directory or s3://bucket/prefix")
    f.add_argument("--out", type=Path, help="write the newest capture of the photo here")
    receipt_key(f)


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
        evidence = f"  evidence {_compact(e.evidence)}" if e.evidence else ""
        print(
            f"{e.seq:>5}  {e.time}  {e.actor:<24} {e.action:<9} "
            f"{e.from_version or '-'} -> {e.to_version or '-'}  {e.reason}{evidence}"
        )


def _compact(evidence: dict[str, Any], limit: int = 200) -> str:
    """Evidence on one terminal line: compact JSON, escaped (`printable`), cut at `limit`."""
    from model_store.store.base import printable

    text = printable(json.dumps(evidence, separators=(",", ":"), sort_keys=True))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_receipt(given: str) -> str:
    """The receipt text: from stdin (`-`), a file, or the argument itself."""
    if given == "-":
        return sys.stdin.read()
    try:
        is_file = Path(given).is_file()
    except OSError:  # a receipt is longer than a file name may be
        is_file = False
    return Path(given).read_text(errors="replace") if is_file else given


def _verified(args: argparse.Namespace) -> Receipt:
    from model_store.receipts import ReceiptKeys, verify

    if args.receipt_key is None:
        raise SystemExit(_usage(f"give --receipt-key (the service's receipt public key) or env {ENV_RECEIPT_KEY}"))
    return verify(_read_receipt(args.receipt), ReceiptKeys.load(args.receipt_key))


def _photo(receipt: Receipt, location: str) -> tuple[bytes, str]:
    """The captured photo a receipt names (its own request's capture first), and where it was."""
    from model_store.capture import CaptureNotFound, open_capture

    capture = open_capture(location)
    found = capture.find(receipt.image_sha256)
    if not found:
        raise CaptureNotFound(
            f"no photo with sha256 {receipt.image_sha256} in the capture {capture.location} "
            "(not captured, or removed by its size or age bound)"
        )
    best = next((f for f in found if f.request_id == receipt.request_id), found[0])
    return capture.image(best.request_id, best.file), f"{capture.location}: {best.request_id}/{best.file}"


def _receipt(args: argparse.Namespace) -> int:
    from model_store import receipts as rc

    cmd = args.receipt_command
    if cmd == "key":
        for key in rc.ReceiptKeys.load(args.key).by_id.values():  # one: a PEM file holds one key
            print(rc.public_pem(key) if args.pem else json.dumps(rc.jwks(key), indent=2), end="" if args.pem else "\n")
        return 0
    if cmd == "find":
        given = args.receipt.strip()
        if re.fullmatch(r"[0-9a-f]{64}", given):
            return _find(given, None, args)
        receipt = _verified(args)
        return _find(receipt.image_sha256, receipt.request_id, args)
    receipt = _verified(args)
    if cmd == "verify":
        print(receipt.model_dump_json() if args.json else f"OK: verified: {rc.describe(receipt)}")
        return 0
    return _replay(receipt, args)


def _find(sha256: str, request_id: str | None, args: argparse.Namespace) -> int:
    """Every capture of the photo (the receipt's own request first); `--out` writes its bytes."""
    from model_store.capture import CaptureNotFound, open_capture

    capture = open_capture(args.capture)
    found = sorted(capture.find(sha256), key=lambda f: f.request_id != request_id)
    if not found:
        raise CaptureNotFound(f"no photo with sha256 {sha256} in the capture {capture.location} (or it expired)")
    for f in found:
        entry = next(e for e in f.record["images"] if e["file"] == f.file)
        row: dict[str, Any] = {"request_id": f.request_id, "file": f.file}
        row |= {k: f.record.get(k) for k in ("station", "version", "time")}
        row |= {k: entry.get(k) for k in ("probability", "decision")}
        if args.json:
            print(json.dumps(row))
        else:
            when = row["time"]
            row["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)) if isinstance(when, float) else when
            print("  ".join(str(v) for v in row.values()))
    if args.out is not None:
        args.out.write_bytes(capture.image(found[0].request_id, found[0].file))
        print(f"wrote {args.out} ({found[0].request_id}/{found[0].file})", file=sys.stderr)
    return 0


def _replay(receipt: Receipt, args: argparse.Namespace) -> int:
    from model_store.receipts import describe
    from model_store.replay import Replayer

    if (args.image is None) == (args.capture is None):
        return _usage("give the photo (IMAGE) or --capture to take it from, not both")
    if args.public_key is None:
        return _usage(f"replay verifies the bundle: give --public-key PEM (or env {ENV_PUBLIC_KEY})")
    image, source = (args.image.read_bytes(), str(args.image)) if args.image else _photo(receipt, args.capture)
    replayed = Replayer(_store(args), device=args.device).replay(receipt, image)
    if args.json:
        answer = {"replayed": True, "image": source, "probability": replayed.probability}
        print(json.dumps({**answer, "decision": replayed.decision, "receipt": receipt.model_dump()}))
    else:
        print(f"OK: replayed bit for bit from {source}: {describe(receipt)}")
    return 0


def run(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "receipt":
        return _receipt(args)
    if cmd == "keygen":
        from model_store.signing import generate_keypair

        private, public = generate_keypair(args.out)
        print(f"wrote {private} (mode 0600, keep it secret) and {public}")
        return 0
    needs_key = cmd == "canary" and args.canary_command in ("start", "promote", "check")
    if (needs_key or cmd in ("verify", "import", "show", "activate", "rollback")) and args.public_key is None:
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
        canary = store.canary() if infos else None
        revoked = store.revoked() if infos else {}
        for i in infos if not args.json else []:
            mark = "*" if i.active else " "
            note = f"  shadow on {shadow.fraction:.0%} of traffic" if shadow and shadow.version == i.version else ""
            note += f"  canary on {canary.describe()}" if canary and canary.version == i.version else ""
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
    elif cmd == "canary":
        return _canary(store, args)
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
