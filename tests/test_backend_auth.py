"""Access rules: where tokens go, and a webhook secret nobody can derive from the password."""

from __future__ import annotations

import hashlib
import hmac
import stat
from multiprocessing import get_context

import pytest

from ml_backend.labelstudio.client import Connection, choose_connection
from ml_backend.server.auth import AccessPolicy, stored_webhook_secret
from ml_backend.settings import Settings

SETUP = Connection("http://studio-from-setup:8080", "token-from-setup")


def test_configured_token_goes_only_to_the_configured_url():
    assert choose_connection("http://ls.internal:8080", "configured", SETUP) == Connection(
        "http://ls.internal:8080", "configured")
    # a key without a URL is never sent to whatever host /setup names
    assert choose_connection(None, "configured", SETUP) == SETUP
    assert choose_connection(None, "configured", None) is None


def test_setup_token_goes_back_to_its_host_or_to_the_configured_url():
    assert choose_connection(None, None, SETUP) == SETUP
    assert choose_connection("http://ls.internal:8080", None, SETUP) == Connection("http://ls.internal:8080",
                                                                                   "token-from-setup")
    assert choose_connection("http://ls.internal:8080", None, None) is None


def test_a_configured_key_never_reaches_a_setup_host(tmp_path):
    from ml_backend.server.service import BackendService

    settings = Settings(cache_dir=tmp_path, label_studio_api_key="configured-key")
    service = BackendService(settings, scorer_factory=lambda: None, training=object())
    with service._lock:
        service._setup_connections[4] = SETUP
    chosen = service.connection_for(4)
    assert chosen is not None and chosen.token != "configured-key" and chosen.url == SETUP.url


def test_webhook_secret_is_random_stored_private_and_stable(tmp_path):
    path = tmp_path / "webhook_secret"
    secret = stored_webhook_secret(path)
    assert stored_webhook_secret(path) == secret  # a restart agrees
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 40 and stored_webhook_secret(tmp_path / "other") != secret
    assert not list(tmp_path.glob(".*.tmp"))


def test_webhook_secret_is_not_derived_from_the_password(tmp_path):
    one = AccessPolicy.from_settings(Settings(cache_dir=tmp_path / "a", basic_auth_user="u",
                                              basic_auth_password="pw-123"))
    two = AccessPolicy.from_settings(Settings(cache_dir=tmp_path / "b", basic_auth_user="u",
                                              basic_auth_password="pw-123"))
    assert one.webhook_secret and two.webhook_secret and one.webhook_secret != two.webhook_secret
    old_rule = hmac.new(b"pw-123", b"mdsvqa webhook secret v1", hashlib.sha256).hexdigest()
    assert old_rule not in (one.webhook_secret, two.webhook_secret)
    explicit = AccessPolicy.from_settings(Settings(cache_dir=tmp_path / "c", basic_auth_user="u",
                                                   basic_auth_password="pw", webhook_secret="x" * 40))
    assert explicit.webhook_secret == "x" * 40 and not (tmp_path / "c" / "webhook_secret").exists()


def _make(path: str, queue) -> None:
    from pathlib import Path

    queue.put(stored_webhook_secret(Path(path)))


def test_processes_racing_to_make_the_secret_agree(tmp_path):
    context = get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_make, args=(str(tmp_path / "webhook_secret"), queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    secrets = {queue.get(timeout=60) for _ in workers}
    for worker in workers:
        worker.join(60)
    assert len(secrets) == 1


def test_a_damaged_secret_file_is_refused(tmp_path):
    path = tmp_path / "webhook_secret"
    path.write_text("short\n")
    with pytest.raises(ValueError, match="not a webhook secret"):
        stored_webhook_secret(path)
