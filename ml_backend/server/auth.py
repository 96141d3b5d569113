"""Who may call the backend.

- Protocol routes (/setup, /predict, /versions, /train, /metrics) need HTTP basic auth when
  MDSVQA_BASIC_AUTH_USER/PASSWORD are set; Label Studio sends them (ML backend settings,
  "Basic Auth") on every protocol call, including the START_TRAINING webhook call.
- /webhook also receives Label Studio's automatically created webhook, which carries no
  credentials. It is accepted when it brings the webhook secret in the
  ``X-Mdsvqa-Webhook-Secret`` header; the backend installs that header on the webhook
  itself after /setup (server/sync.py). The secret is MDSVQA_WEBHOOK_SECRET, or else
  derived from the basic auth password, so several backend processes agree on it.
- /health stays open: Label Studio calls it with a 1 s timeout and it reveals nothing.
Secrets are compared in constant time and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field

from ..settings import Settings

WEBHOOK_SECRET_HEADER = "X-Mdsvqa-Webhook-Secret"


def derive_webhook_secret(password: str) -> str:
    return hmac.new(password.encode(), b"mdsvqa webhook secret v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AccessPolicy:
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> "AccessPolicy":
        password = settings.basic_auth_password.get_secret_value() if settings.basic_auth_password else None
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        if secret is None and password:
            secret = derive_webhook_secret(password)
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
        return hmac.compare_digest(user.encode(), self.user.encode()) & hmac.compare_digest(
            password.encode(), self.password.encode())

    def webhook_ok(self, authorization: str | None, secret_header: str | None) -> bool:
        if self.webhook_secret is None and not self.basic_auth_required:
            return True
        if self.basic_auth_required and authorization and self.basic_auth_ok(authorization):
            return True
        return bool(self.webhook_secret and secret_header
                    and hmac.compare_digest(secret_header.encode(), self.webhook_secret.encode()))
