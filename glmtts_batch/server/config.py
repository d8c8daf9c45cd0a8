"""Server settings: bind address, token, jobs folder and the limits an upload must respect."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from glmtts_batch.errors import ServeConfigError

MIB = 1 << 20


@dataclass(frozen=True)
class ServerLimits:
    """Going over one of these is a 413 (sizes) or a 400 (counts), naming the limit."""

    max_file_bytes: int = 50 * MIB  # one uploaded file (task file, prompt audio, voice)
    max_job_bytes: int = 200 * MIB  # one request body (a job's task file + every prompt file)
    max_lines: int = 10_000  # task lines per job
    max_text_chars: int = 2_000  # input_text per task, and `input` of a speech request


@dataclass(frozen=True)
class ServeConfig:
    jobs_dir: Path
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    limits: ServerLimits = field(default_factory=ServerLimits)
    batch_size: int | None = None  # tasks per engine call in jobs (None: the engine's default)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to anything: treat it as reachable from outside


def read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ServeConfigError(f"cannot read --token-file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ServeConfigError(f"--token-file {str(path)!r} must hold one token of at least 16 characters, no spaces")
    return token


def check_bind(host: str, token: str | None) -> None:
    """A server reachable from other machines must not run without a bearer token."""
    if token is None and not is_loopback(host):
        raise ServeConfigError(
            f"refusing to bind {host!r} without --token-file: every request would be unauthenticated. "
            "Pass --token-file FILE (clients send 'Authorization: Bearer <token>'), "
            "or bind 127.0.0.1 for local use only"
        )
