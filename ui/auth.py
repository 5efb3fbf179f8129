"""The operations console's logins: salted PBKDF2 password hashes, never plain text.

A user is one entry of ``[ui] admins`` in config.toml: ``"name:pbkdf2_sha256$ITERATIONS$SALT$HASH"``.
``livedit ui hash-password`` prints such an entry. ``login_check(entries)`` is the callable that
Gradio's ``auth=`` takes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable

SCHEME = "pbkdf2_sha256"
ITERATIONS = 240_000


def hash_password(password: str, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT$HASH`` of ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("an empty password cannot be hashed")
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), iterations)
    return f"{SCHEME}${iterations}${salt}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (a hash_password result), in constant time."""
    try:
        scheme, iterations, salt, expected = encoded.split("$")
        rounds = int(iterations)
    except ValueError:
        return False
    if scheme != SCHEME:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("ascii"), rounds)
    return hmac.compare_digest(digest.hex(), expected)


def admin_entry(name: str, password: str) -> str:
    """The ``[ui] admins`` entry for one user."""
    if not name or ":" in name or any(ch.isspace() for ch in name):
        raise ValueError("a user name needs at least one character and no ':' or spaces")
    return f"{name}:{hash_password(password)}"


def parse_admins(entries: list[str]) -> dict[str, str]:
    """``{name: hash}`` from the ``[ui] admins`` entries (the config has checked their form)."""
    return dict(entry.split(":", 1) for entry in entries)


def login_check(entries: list[str]) -> Callable[[str, str], bool]:
    """Gradio's ``auth=`` callable over the configured users; with none, nobody gets in."""
    users = parse_admins(entries)

    def check(name: str, password: str) -> bool:
        encoded = users.get(name)
        return encoded is not None and verify_password(password or "", encoded)

    return check
