"""Node key files: an Ed25519 private key, hex, in a file only its owner can read.

Format (text, one key):

    # onebyte node key (Ed25519 private key, hex). Keep it secret.
    <64 hex digits>

The node id is blake2b-128 of the raw public key (see contracts): the key *is* the
node's identity, so rotating it makes a new node (docs/operations.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

from .errors import KeyFileError

HEADER = "# onebyte node key (Ed25519 private key, hex). Keep it secret.\n"


def public_of(private: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(private)
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def write_key(path: str | Path, force: bool = False, private: bytes | None = None) -> bytes:
    """Create a key at `path` (mode 0600, created that way: never world-readable): a fresh one,
    or `private` (e.g. one that carries an open swarm's admission work)."""
    path = Path(path)
    if private is None:
        private = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; pass --force to replace it "
                           "(this changes the node id)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # also when --force reused an existing, looser file
        f.write(HEADER + private.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return private


def read_key(path: str | Path) -> bytes:
    """The 32 private-key bytes; every failure is a one-line KeyFileError."""
    path = Path(path)
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} not found; create one with `onebyte keygen --out {path}`") from None
    except PermissionError:
        raise KeyFileError(f"key file {path} is not readable by this user (uid {os.getuid()}); "
                           "fix its owner or permissions (it should be mode 0600)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path} cannot be read: {getattr(exc, 'strerror', exc)}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1:
        raise KeyFileError(f"key file {path} is malformed: expected one line of 64 hex digits; "
                           "regenerate it with `onebyte keygen`")
    try:
        private = bytes.fromhex(lines[0])
    except ValueError:
        private = b""
    if len(private) != 32:
        raise KeyFileError(f"key file {path} is malformed: expected 64 hex digits (an Ed25519 private key)")
    return private


def loose_permissions(path: str | Path) -> bool:
    """True if group or others may read the key (we warn; systemd credentials are 0400/0440)."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IRWXO)
    except OSError:
        return False
