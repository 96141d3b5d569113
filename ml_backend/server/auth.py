"""Who may call the backend.

- Protocol routes (/setup, /predict, /versions, /train, /metrics) need HTTP basic auth when
  MDSVQA_BASIC_AUTH_USER/PASSWORD are set; Label Studio sends them (ML backend settings,
  "Basic Auth") on every protocol call, including the START_TRAINING webhook call.
- /webhook also receives Label Studio's automatically created webhook, which carries no
  credentials. It is accepted when it brings the webhook secret in the
  ``X-Mdsvqa-Webhook-Secret`` header; the backend installs that header on the webhook
  itself after /setup (server/actions.py). The secret is MDSVQA_WEBHOOK_SECRET, or else a
  random one made once and kept in ``MDSVQA_CACHE_DIR/webhook_secret`` (mode 0600), so
  restarts and processes sharing the cache agree on it. It is never derived from the
  password: every Label Studio user of the project can read webhook headers
  (``/api/webhooks/``), and a derived secret would let them test password guesses offline.
- /health stays open: Label Studio calls it with a 1 s timeout and it reveals nothing.
Secrets are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import Settings

WEBHOOK_SECRET_HEADER = "X-Mdsvqa-Webhook-Secret"


def stored_webhook_secret(path: Path) -> str:
    """The secret kept at ``path``; made (random, 256 bits, mode 0600) by the first process that asks.

    Written whole to a private temporary file, then hard-linked into place: the link fails if
    another process got there first, and nobody ever reads a half-written secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: not a webhook secret (delete it and a new one is made)")
    return secret


@dataclass(frozen=True)
class AccessPolicy:
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        password = settings.basic_auth_password.get_secret_value() if settings.basic_auth_password else None
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        if secret is None and password:
            secret = stored_webhook_secret(settings.webhook_secret_path)
        return cls(settings.basic_auth_user or None, password or None, secret or None)

    @property
    def basic_auth_required(self) -> bool:
        return bool(self.user and self.password)

    @property
    def webhook_header(self) -> tuple[str, str] | None:
        """The header Label Studio's webhook must carry, or None when webhooks are open."""
        return (WEBHOOK_SECRET_HEADER, self.webhook_secret) if self.webhook_secret else None

    def basic_auth_ok(self, authorization: str | None) -> bool:
        if not self.basic_auth_required:
            return True
        if not authorization or not authorization.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(authorization[6:].strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        expected_user, expected_password = self.user or "", self.password or ""  # both set: required above
        return hmac.compare_digest(user.encode(), expected_user.encode()) & hmac.compare_digest(
            password.encode(), expected_password.encode())

    def webhook_ok(self, authorization: str | None, secret_header: str | None) -> bool:
        if self.webhook_secret is None and not self.basic_auth_required:
            return True
        if self.basic_auth_required and authorization and self.basic_auth_ok(authorization):
            return True
        return bool(self.webhook_secret and secret_header
                    and hmac.compare_digest(secret_header.encode(), self.webhook_secret.encode()))
