"""The remote engine's token: where it comes from, where it is kept, and how it is compared.

A token is a shared secret, not a user account: anyone holding it may run jobs. It is generated with
`secrets` on first start and kept (mode 0600) in the engine's config folder, so restarting the engine
does not force every artist to paste a new one.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path

from engine.errors import BsbError

TOKEN_FILE = "remote-token"
MIN_TOKEN_CHARS = 16
ENV_TOKEN = "BSB_REMOTE_TOKEN"


def config_dir() -> Path:
    """`$BSB_CONFIG_DIR`, else `$XDG_CONFIG_HOME/bsb`, else `~/.config/bsb`."""
    if os.environ.get("BSB_CONFIG_DIR"):
        return Path(os.environ["BSB_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bsb"


def resolve_token(given: str | None, folder: Path | None = None) -> tuple[str, str]:
    """(token, where it came from). `given` (--token) wins, then $BSB_REMOTE_TOKEN, then the stored file,
    else a new one is generated and stored. An empty `given` means "no token" (loopback only)."""
    if given is not None:
        return _checked(given, "--token"), "--token"
    if os.environ.get(ENV_TOKEN):
        return _checked(os.environ[ENV_TOKEN], f"${ENV_TOKEN}"), f"${ENV_TOKEN}"
    path = (folder or config_dir()) / TOKEN_FILE
    if path.is_file():
        return _checked(path.read_text(encoding="utf-8").strip(), str(path)), f"stored in {path}"
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
    except OSError as exc:
        return token, f"new, NOT stored ({exc.strerror} writing {path}): it changes on every start"
    return token, f"new, stored in {path}"


def _checked(token: str, source: str) -> str:
    token = token.strip()
    if token and (len(token) < MIN_TOKEN_CHARS or not token.isprintable()):
        raise BsbError(f"the token from {source} is too weak: use at least {MIN_TOKEN_CHARS} printable "
                       "characters (or leave it out to have one generated)", "bad_request")
    return token


def token_matches(offered: object, token: str) -> bool:
    """Constant-time comparison; an engine without a token (loopback only) accepts any offer."""
    if not token:
        return True
    if not isinstance(offered, str):
        return False
    return hmac.compare_digest(offered.encode("utf-8"), token.encode("utf-8"))


def is_loopback(host: str) -> bool:
    """True when every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BsbError(f"--listen {text!r} must be HOST:PORT, e.g. 127.0.0.1:8765 or 0.0.0.0:8765", "bad_request")
    return host.strip("[]"), int(port)
