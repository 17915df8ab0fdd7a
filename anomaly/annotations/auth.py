"""Annotator accounts and sessions: viewing needs no login, annotating does.

* Accounts: lines ``name:pbkdf2_sha256$iterations$salt$hash`` (salt and hash in hex) in
  ``$ANOMALY_USERS_FILE`` (default ``$ANOMALY_DATA_DIR/users.txt``) and/or the comma-separated
  ``$ANOMALY_USERS`` ("name:pbkdf2_sha256$...,other:..."). Hashes are PBKDF2-HMAC-SHA256
  (``hashlib.pbkdf2_hmac``), compared in constant time. ``python -m anomaly.annotations add-user
  NAME`` appends a line. The list is read at every login, so adding a user needs no restart.
* Sessions: a successful login returns a token ``payload.signature`` (HMAC-SHA256 with the server's
  secret, ``$ANOMALY_SESSION_SECRET`` or a random one kept in ``data/.session_secret``) naming the
  user, an expiry and a fingerprint of the user's password hash: changing the password or removing
  the user ends the session. The page keeps the token in the browser (``gr.BrowserState``); each
  annotation call checks it again on the server.
* Failed logins are throttled per user name (in memory).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path

from anomaly.annotations.store import AnnotationError
from anomaly.keys import data_dir

USERS_FILE_ENV = "ANOMALY_USERS_FILE"
USERS_ENV = "ANOMALY_USERS"
SECRET_ENV = "ANOMALY_SESSION_SECRET"
ALGO = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
TOKEN_TTL_S = 12 * 3600
NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_FAILURES = 5
LOCKOUT_S = 60.0


class AuthError(AnnotationError):
    """Not logged in, a wrong password, an expired session or a bad account line."""


# ----------------------------------------------------------------------------- passwords


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    """``pbkdf2_sha256$ITERATIONS$SALT_HEX$HASH_HEX``."""
    if not password:
        raise AuthError("the password must not be empty")
    salt = salt if salt is not None else secrets.token_bytes(16)
    dk = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(iterations))
    return f"{ALGO}${int(iterations)}${salt.hex()}${dk.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of ``password`` against an encoded hash; False for a malformed hash."""
    try:
        algo, iters, salt_hex, hash_hex = encoded.strip().split("$")
        if algo != ALGO or int(iters) < 1:
            return False
        dk = hashlib.pbkdf2_hmac("sha256", (password or "").encode(), bytes.fromhex(salt_hex), int(iters))
        return hmac.compare_digest(dk, bytes.fromhex(hash_hex))
    except (ValueError, TypeError):
        return False


# ----------------------------------------------------------------------------- accounts


def users_file() -> Path:
    env = os.environ.get(USERS_FILE_ENV, "").strip()
    return Path(env) if env else data_dir() / "users.txt"


def _parse_line(line: str, where: str) -> tuple[str, str] | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    name, sep, encoded = line.partition(":")
    name = name.strip()
    if not sep or not NAME_RE.match(name) or not encoded.strip().startswith(ALGO + "$"):
        raise AuthError(f"{where}: bad account line (expected name:{ALGO}$iterations$salt$hash)")
    return name, encoded.strip()


def load_users() -> dict[str, str]:
    """name -> encoded hash, from the users file and ``$ANOMALY_USERS`` (the environment wins)."""
    users: dict[str, str] = {}
    p = users_file()
    if p.is_file():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            kv = _parse_line(line, f"{p}:{i}")
            if kv:
                users[kv[0]] = kv[1]
    for part in os.environ.get(USERS_ENV, "").split(","):
        kv = _parse_line(part, USERS_ENV)
        if kv:
            users[kv[0]] = kv[1]
    return users


def annotation_enabled() -> bool:
    """Whether at least one annotator account is configured."""
    try:
        return bool(load_users())
    except AuthError:
        return False


def add_user(name: str, password: str, path: Path | None = None, iterations: int = DEFAULT_ITERATIONS) -> Path:
    """Appends ``name:hash`` to the users file (refuses an existing name); returns the file."""
    if not NAME_RE.match(name or ""):
        raise AuthError(f"user name {name!r} must be 1-64 letters, digits or _ . @ -")
    p = Path(path) if path else users_file()
    if p.is_file():
        for i, line in enumerate(p.read_text().splitlines(), 1):
            kv = _parse_line(line, f"{p}:{i}")
            if kv and kv[0] == name:
                raise AuthError(f"user {name!r} already exists in {p}: edit or remove that line first")
    line = f"{name}:{hash_password(password, iterations)}\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return p


# ----------------------------------------------------------------------------- login + sessions

_FAILS: dict[str, tuple[int, float]] = {}
_FAILS_LOCK = threading.Lock()


def check_login(name: str, password: str) -> bool:
    """True if ``name`` / ``password`` match an account. Unknown users cost the same work;
    after ``MAX_FAILURES`` failures a name is locked out for ``LOCKOUT_S`` seconds."""
    name = (name or "").strip()
    with _FAILS_LOCK:
        n, until = _FAILS.get(name, (0, 0.0))
        if n >= MAX_FAILURES and time.monotonic() < until:
            raise AuthError(f"too many failed logins for {name!r}: wait {int(until - time.monotonic()) + 1} s")
    encoded = load_users().get(name)
    if encoded is None:  # the same work as a real check, so timing does not reveal which names exist
        hashlib.pbkdf2_hmac("sha256", (password or "").encode(), b"0" * 16, DEFAULT_ITERATIONS)
        ok = False
    else:
        ok = verify_password(password or "", encoded)
    with _FAILS_LOCK:
        if ok:
            _FAILS.pop(name, None)
        else:
            n, _ = _FAILS.get(name, (0, 0.0))
            _FAILS[name] = (n + 1, time.monotonic() + LOCKOUT_S)
    return ok


def session_secret() -> bytes:
    env = os.environ.get(SECRET_ENV, "").strip()
    if env:
        return env.encode()
    p = data_dir() / ".session_secret"
    if p.exists():
        return p.read_text().strip().encode()
    p.parent.mkdir(parents=True, exist_ok=True)
    s = secrets.token_hex(32)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(s)
    except FileExistsError:
        return p.read_text().strip().encode()
    return s.encode()


def browser_state_secret() -> str | None:
    """The key the page's stored session token is encrypted with (``gr.BrowserState(secret=...)``):
    derived from ``session_secret``, so that a login survives an app restart as long as its token
    does (without it Gradio draws a new key at every launch); None where no secret can be kept."""
    try:
        return hmac.new(session_secret(), b"browser-state", hashlib.sha256).hexdigest()
    except OSError:
        return None


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _fingerprint(encoded: str) -> str:
    return hashlib.sha256(encoded.encode()).hexdigest()[:12]


def issue_token(name: str, ttl_s: int = TOKEN_TTL_S) -> str:
    users = load_users()
    if name not in users:
        raise AuthError(f"no annotator account {name!r}")
    payload = _b64(json.dumps({"u": name, "exp": int(time.time()) + int(ttl_s), "fp": _fingerprint(users[name])},
                              separators=(",", ":")).encode())
    sig = _b64(hmac.new(session_secret(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


def verify_token(token) -> str | None:
    """The user a token was issued to, or None (missing, forged, expired, user gone or password changed)."""
    if not token or not isinstance(token, str) or token.count(".") != 1:
        return None
    payload, sig = token.split(".")
    want = _b64(hmac.new(session_secret(), payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want, sig):
        return None
    try:
        d = json.loads(_unb64(payload))
        name, exp, fp = d["u"], int(d["exp"]), d["fp"]
    except (ValueError, KeyError, TypeError):
        return None
    if exp < time.time():
        return None
    try:
        encoded = load_users().get(name)
    except AuthError:
        return None
    if encoded is None or not hmac.compare_digest(_fingerprint(encoded), str(fp)):
        return None
    return name


def login(name: str, password: str) -> str:
    """A session token for a valid name / password; ``AuthError`` otherwise."""
    if not load_users():
        raise AuthError("annotation is not enabled on this server: no annotator accounts (add one with "
                        "`python -m anomaly.annotations add-user NAME`)")
    if not check_login(name, password):
        raise AuthError("wrong user name or password")
    return issue_token((name or "").strip())


__all__ = ["AuthError", "hash_password", "verify_password", "load_users", "add_user", "check_login", "login",
           "issue_token", "verify_token", "users_file", "annotation_enabled"]
