"""``mdsvqa demo --check`` end to end, as CI runs it: real Label Studio, real backend, derived pool."""

import os
import re
import subprocess
import sys

import pytest

from tests.media import REPO


@pytest.mark.labelstudio
def test_demo_check_runs_the_whole_loop_and_stops_everything(tmp_path, label_studio_bin):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDSVQA_", "LABEL_STUDIO_"))}
    env["MDSVQA_LABEL_STUDIO_BIN"] = str(label_studio_bin)
    proc = subprocess.run([sys.executable, "-m", "ml_backend.cli", "demo", "--check", "--workdir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "TINY RANDOM" in output and "check passed" in output
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([0-9.]+)\s+(\S+\.mp4)$", proc.stdout, re.M)
    assert len(rows) == 10
    priorities = [float(r[2]) for r in rows]
    assert priorities == sorted(priorities, reverse=True) and priorities[0] == 1.0
    assert all(1.0 <= float(r[3]) <= 5.0 for r in rows)
    assert len(list((tmp_path / "pool").glob("*.mp4"))) == 16  # 4 videos x 4 derived variants
    # The project report (read-only `report --project`) numbers the same picks as the queue head.
    page = (tmp_path / "report.html").read_text()
    picked = re.findall(r"<tr><td class='num'>(\d+)</td><td>task (\d+): ", page)
    assert len(picked) == 8 and [int(rank) for rank, _ in picked] == list(range(1, 9))
    queue_head = [int(r[1]) for r in rows[:8]]
    assert [int(task) for _, task in picked] == queue_head
    assert page.count("data:image/png;base64,") == 3 and "meaningless" in page
    # Both services were stopped: nothing is left listening on the printed Label Studio port.
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/projects", proc.stdout).group(1))
    import socket

    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert f"logs: {tmp_path.resolve() / 'label-studio' / 'label-studio.log'}" in output
    # A newcomer runs it again in the same folder: same Label Studio user, everything still works.
    again = subprocess.run([sys.executable, "-m", "ml_backend.cli", "demo", "--check", "--workdir", str(tmp_path)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    second = again.stdout + again.stderr
    assert again.returncode == 0 and "check passed" in second, second[-3000:]


def test_reset_deletes_only_a_demo_folder(tmp_path):
    from ml_backend.demo.run import MARKER, reset_workdir
    from ml_backend.errors import MdsVqaError

    stranger = tmp_path / "not-a-demo"
    (stranger / "label-studio").mkdir(parents=True)
    with pytest.raises(MdsVqaError, match="not made by"):
        reset_workdir(stranger)
    assert (stranger / "label-studio").exists()
    demo = tmp_path / "demo"
    (demo / "label-studio" / "label-studio-data").mkdir(parents=True)
    (demo / MARKER).touch()
    reset_workdir(demo)
    assert not demo.exists()
    reset_workdir(demo)  # nothing there: nothing to do


def test_a_kept_label_studio_data_dir_keeps_its_user(tmp_path):
    """A second demo in the same folder logs in as the first (Label Studio makes the user only once)."""
    from ml_backend.demo.processes import _studio_identity

    first = _studio_identity(tmp_path, "demo@x.invalid", None, None)
    (tmp_path / "label-studio-data").mkdir()  # what the first Label Studio leaves behind
    assert _studio_identity(tmp_path, "demo@x.invalid", None, None) == first
    assert (tmp_path / "identity.json").stat().st_mode & 0o777 == 0o600
    # a data dir whose user is not known (or other credentials asked for) is started afresh
    (tmp_path / "identity.json").unlink()
    (tmp_path / "label-studio-data" / "label_studio.sqlite3").write_text("old user")
    fresh = _studio_identity(tmp_path, "demo@x.invalid", None, None)
    assert fresh != first and not (tmp_path / "label-studio-data").exists()
