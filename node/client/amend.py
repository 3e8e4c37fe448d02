"""`onebyte admit | revoke | rotate | amend`: build membership amendments, sign them with the
genesis authority's keys and submit them through any running node (protocol/amendments.py;
docs/operations.md, "Changing the members").

The authority's private keys stay with the operator: the daemon only ever sees the signed
amendment. With k of n authority keys, one person signs and saves (`--save FILE`), the next
adds a signature (`onebyte amend FILE --authority-key K --save FILE`), and anyone submits
(`onebyte amend FILE`). Like the other client commands this imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from .client import ask
from ..errors import DaemonUnreachable, UserError


def _identity(path: str):
    from onebyte.protocol import Identity

    from ..keys import read_key
    return Identity.from_private_bytes(read_key(path))


def _public_key(spec: str) -> bytes:
    """A member named as 64 hex digits (as `onebyte keygen` prints it) or by a key file."""
    s = spec.strip().lower()
    if len(s) == 64 and all(c in "0123456789abcdef" for c in s):
        return bytes.fromhex(s)
    if Path(spec).is_file():
        return _identity(spec).public_bytes()
    raise UserError(f"{spec!r} is neither a public key (64 hex digits) nor a key file")


def _members(args) -> dict:
    return ask(args, {"cmd": "members"})


def _next_number(args) -> int:
    if args.number:
        return args.number
    try:
        held = _members(args).get("amendments", [])
    except DaemonUnreachable:
        raise UserError("no running node to number the amendment: pass --number N (one more than the "
                        "highest amendment the swarm holds; `onebyte members` lists them)") from None
    return max((a["number"] for a in held), default=0) + 1


def _default_step(args, key: bytes) -> int:
    """The key's next step as the node knows it: its published steps stay, later ones are cut."""
    from onebyte.protocol.identity import node_id_of
    nid = node_id_of(key).hex()
    try:
        members = _members(args)["members"]
    except DaemonUnreachable:
        raise UserError("no running node to find the key's next step: pass --from-step S (its first step "
                        "to exclude; `onebyte members` on any node shows how many it published)") from None
    rows = [m for m in members if m["node_id"] == nid]
    return (rows[0]["updates"] if rows else 0) + 1


def _sign_and_finish(args, a, swarm_id: bytes | None = None) -> int:
    from onebyte.protocol.amendments import describe, signed
    from onebyte.protocol.wire import encode_amend
    swarm_id = swarm_id or _swarm_id(args)
    for path in args.authority_key:
        a = signed(a, _identity(path), swarm_id)
    if args.save:
        Path(args.save).write_text(encode_amend(a).hex() + "\n")
        print(f"saved {describe(a)} with {len(a.sigs)} signature(s) to {args.save}; "
              f"submit it with `onebyte amend {args.save}`")
        return 0
    if not a.sigs:
        raise UserError("no --authority-key: an amendment needs the authority's signature(s)")
    ans = ask(args, {"cmd": "amend", "amendment": encode_amend(a).hex()})
    done = ans.get("took_effect") or []
    print(f"submitted {describe(a)}: " + ("in effect" if done else
          f"held, waiting for amendment {ans['in_effect'] + 1} (the node has 1..{ans['in_effect']} in effect)"))
    return 0


def _swarm_id(args) -> bytes:
    """The swarm id every signature covers: from the genesis (--genesis, or the node config's)."""
    from ..config import load_config
    from ..genesis import load_genesis
    path = args.genesis or load_config(args.config).genesis
    return load_genesis(path).swarm_id


def cmd_admit(args) -> int:
    from onebyte.protocol.amendments import AmendKind
    from onebyte.protocol.wire import Amend
    return _sign_and_finish(args, Amend(_next_number(args), AmendKind.ADMIT, _public_key(args.key)))


def cmd_revoke(args) -> int:
    from onebyte.protocol.amendments import AmendKind
    from onebyte.protocol.wire import Amend
    key = _public_key(args.key)
    step = args.from_step or _default_step(args, key)
    if step < 1:
        raise UserError(f"--from-step must be >= 1, got {step}")
    return _sign_and_finish(args, Amend(_next_number(args), AmendKind.REVOKE, key, step))


def cmd_rotate(args) -> int:
    from onebyte.protocol.amendments import rotation
    old, new = _identity(args.old_key), _identity(args.new_key)
    if old.public_bytes() == new.public_bytes():
        raise UserError("--old-key and --new-key are the same key")
    step = args.from_step or _default_step(args, old.public_bytes())
    swarm_id = _swarm_id(args)
    return _sign_and_finish(args, rotation(_next_number(args), old, new, step, swarm_id), swarm_id)


def cmd_amend(args) -> int:
    from onebyte.protocol.wire import WireError, decode_amend
    try:
        a = decode_amend(bytes.fromhex(Path(args.file).read_text().strip()))
    except FileNotFoundError:
        raise UserError(f"{args.file}: no such file") from None
    except (ValueError, WireError):
        raise UserError(f"{args.file}: not an amendment (`onebyte admit --save` writes one)") from None
    return _sign_and_finish(args, a)


def add_parsers(sub, env_cfg: str) -> None:
    def common(s, number=True):
        s.add_argument("--authority-key", action="append", default=[], metavar="FILE",
                       help="an authority key file (repeatable: k of n keys sign)")
        s.add_argument("--save", default="", metavar="FILE", help="write the signed amendment here instead "
                       "of submitting it (for more signatures: `onebyte amend FILE --authority-key K`)")
        s.add_argument("--config", default=env_cfg, help="node config (its genesis and status socket)")
        s.add_argument("--socket", default="", help="status socket path (instead of --config's)")
        s.add_argument("--genesis", default="", help="genesis file (instead of --config's)")
        s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the daemon")
        if number:
            s.add_argument("--number", type=int, default=0, help="amendment number (default: one more than "
                           "the highest the node holds)")

    s = sub.add_parser("admit", help="admit a key to the swarm (signed membership amendment)",
                       description="Admit a member's key by an amendment the genesis authority signs.")
    s.add_argument("key", help="the new member's public key (hex, as keygen prints it) or key file")
    common(s)
    s.set_defaults(func=cmd_admit)

    s = sub.add_parser("revoke", help="revoke a key from a step on (signed membership amendment)",
                       description="Revoke a member's key: its steps from --from-step on are excluded "
                       "everywhere (taken back where applied) and its certificates refused.")
    s.add_argument("key", help="the member's public key (hex) or key file")
    s.add_argument("--from-step", type=int, default=0, help="first step excluded (default: the next step the "
                   "node has not yet seen from it)")
    common(s)
    s.set_defaults(func=cmd_revoke)

    s = sub.add_parser("rotate", help="move a member to a new key (signed by both keys and the authority)",
                       description="Rotate a member to a new key: the old key is revoked from --from-step, the "
                       "new one admitted; both keys sign the link.")
    s.add_argument("--old-key", required=True, help="the member's current key file")
    s.add_argument("--new-key", required=True, help="its new key file (`onebyte keygen --out ...`)")
    s.add_argument("--from-step", type=int, default=0, help="the old key's first step excluded (default: the "
                   "next step the node has not yet seen from it)")
    common(s)
    s.set_defaults(func=cmd_rotate)

    s = sub.add_parser("amend", help="add signatures to a saved amendment, or submit it",
                       description="Add --authority-key signatures to an amendment saved by admit/revoke/rotate "
                       "--save, then submit it to the node (or --save it again).")
    s.add_argument("file", help="the saved amendment")
    common(s, number=False)
    s.set_defaults(func=cmd_amend)
