"""Starting and stopping Label Studio and ``mdsvqa serve`` as local subprocesses.

Label Studio runs from its own virtualenv (it pins Django and its own SDK), offline and on
loopback, with the settings SPEC section 7 lists. Both processes get their own process
group so that stopping them stops their children (Django threads, helper processes).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MdsVqaError

LABEL_STUDIO_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parents[2]


class ProcessError(MdsVqaError):
    """A service did not start (its log tail is in the message) or could not be installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, condition: Callable[[], object], *, timeout: float, what: str,
                   interval: float = 0.25) -> object:
        """Poll ``condition`` (exceptions count as not yet); fail early if the process dies."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = condition()
            except Exception:  # noqa: BLE001 - a condition that raises is not met yet
                value = None
            if value:
                return value
            if not self.alive():
                raise ProcessError(f"{self.name} exited ({self.process.returncode}) while waiting for {what}:\n"
                                   f"{log_tail(self.log)}")
            if time.monotonic() > deadline:
                raise ProcessError(f"{self.name}: timed out after {timeout:g} s waiting for {what}:\n"
                                   f"{log_tail(self.log)}")
            time.sleep(interval)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout``."""
        if not self.alive():
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass


def spawn(name: str, command: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> ManagedProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    return ManagedProcess(name, process, log)


def label_studio_binary(venv: Path | None = None, *, install: bool = True) -> Path:
    """Label Studio's executable: $MDSVQA_LABEL_STUDIO_BIN, else ``venv``, installed there when missing."""
    explicit = os.environ.get("MDSVQA_LABEL_STUDIO_BIN")
    if explicit:
        if not Path(explicit).exists():
            raise ProcessError(f"MDSVQA_LABEL_STUDIO_BIN={explicit} does not exist")
        return Path(explicit)
    venv = Path(venv or os.environ.get("MDSVQA_LABEL_STUDIO_VENV") or REPO / ".cache" / "labelstudio-venv")
    binary = venv / "bin" / "label-studio"
    if binary.exists() and _installed_version(venv) == LABEL_STUDIO_VERSION:
        return binary
    if not install:
        raise ProcessError(f"Label Studio {LABEL_STUDIO_VERSION} is not installed in {venv}")
    print(f"installing label-studio=={LABEL_STUDIO_VERSION} into {venv} (about 70 s, once)", file=sys.stderr)
    python = os.environ.get("PYTHON", "python3")
    for command in ([python, "-m", "venv", str(venv)],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                    [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                     f"label-studio=={LABEL_STUDIO_VERSION}"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ProcessError(f"installing Label Studio failed at {' '.join(command[:4])}:\n{result.stderr[-2000:]}")
    return binary


def _installed_version(venv: Path) -> str | None:
    result = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import importlib.metadata as m; print(m.version('label-studio'))"],
                            capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


def label_studio_environment(port: int, media_root: Path, secret_key: str) -> dict[str, str]:
    """Our environment minus our own settings, plus what an offline Label Studio on loopback needs (SPEC 7)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "MDSVQA_", "DJANGO_"))}
    env.update({
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
        "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(media_root),
        # /setup tells the backend this URL; "localhost" could resolve to ::1 where nothing listens.
        "LABEL_STUDIO_HOST": f"http://127.0.0.1:{port}",
        "SECRET_KEY": secret_key,
    })
    return env


@dataclass
class LabelStudioService:
    url: str
    token: str
    username: str
    password: str
    media_root: Path
    managed: ManagedProcess


def _studio_identity(workdir: Path, username: str, password: str | None, token: str | None
                     ) -> tuple[str, str, str]:
    """The user of this data dir: made once and kept beside it, so a second run logs in as the first.

    Label Studio creates the user (and its token) only when the data dir is new; a data dir
    from a run that kept no identity is started afresh instead of failing with "Invalid token".
    """
    import json
    import shutil

    from ..fileio import atomic_write_json

    data_dir, saved = workdir / "label-studio-data", workdir / "identity.json"
    if data_dir.exists() and saved.exists():
        kept = json.loads(saved.read_text())
        if (password is None or password == kept["password"]) and (token is None or token == kept["token"]):
            return kept["username"], kept["password"], kept["token"]
    if data_dir.exists():
        shutil.rmtree(data_dir)  # its user is unknown (or other credentials were asked for): start clean
    identity = {"username": username, "password": password or "mdsvqa-" + os.urandom(6).hex(),
                "token": token or "mdsvqa-" + os.urandom(12).hex()}
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, identity)
    os.chmod(saved, 0o600)  # a login: readable by its owner only
    return identity["username"], identity["password"], identity["token"]


def start_label_studio(workdir: Path, *, port: int | None = None, username: str = "demo@mdsvqa.invalid",
                       password: str | None = None, token: str | None = None,
                       timeout: float = 240) -> LabelStudioService:
    """Start Label Studio offline on 127.0.0.1 with a data dir under ``workdir``; wait for its API."""
    import httpx

    binary = label_studio_binary()
    port = port or free_port()
    username, password, token = _studio_identity(workdir, username, password, token)
    media_root = workdir / "media"
    media_root.mkdir(parents=True, exist_ok=True)
    secret = workdir / "secret-key"
    if not secret.exists():
        secret.write_text(os.urandom(24).hex())
    env = label_studio_environment(port, media_root, secret.read_text())
    command = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
               "--data-dir", str(workdir / "label-studio-data"), "--username", username, "--password", password,
               "--user-token", token, "--enable-legacy-api-token"]
    managed = spawn("Label Studio", command, env=env, log=workdir / "label-studio.log", cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    try:
        managed.wait_until(lambda: httpx.get(url + "/health", timeout=2).json().get("status") == "UP",
                           timeout=timeout, what="/health")
        managed.wait_until(lambda: httpx.get(url + "/api/projects", timeout=5,
                                             headers={"Authorization": f"Token {token}"}).status_code == 200,
                           timeout=60, what="the API with the token")
    except BaseException:
        managed.stop()
        raise
    return LabelStudioService(url, token, username, password, media_root, managed)


@dataclass
class BackendService:
    url: str
    managed: ManagedProcess


def start_backend(*, base: str, adapter: str, cache_dir: Path, model_dir: Path, log: Path,
                  port: int | None = None, extra_env: dict[str, str] | None = None,
                  timeout: float = 300) -> BackendService:
    """``mdsvqa serve`` as a subprocess; waits until its model is loaded."""
    import httpx

    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "MDSVQA_"))}
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "MDSVQA_CACHE_DIR": str(cache_dir),
        "MDSVQA_MODEL_DIR": str(model_dir),
    })
    env.update(extra_env or {})
    command = [sys.executable, "-m", "ml_backend.cli", "serve", "--base", base, "--adapter", adapter,
               "--host", "127.0.0.1", "--port", str(port)]
    managed = spawn("mdsvqa backend", command, env=env, log=log, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        managed.wait_until(lambda: httpx.get(url + "/health", timeout=2).json().get("model") == "ready",
                           timeout=timeout, what="the model to load")
    except BaseException:
        managed.stop()
        raise
    return BackendService(url, managed)
