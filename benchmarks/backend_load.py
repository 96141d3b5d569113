"""Load on the ML backend with a warm cache: what Label Studio sees when many users retrieve predictions.

Starts ``mdsvqa serve`` (tiny model unless --base/--adapter) as a subprocess in a temporary
folder (cache, model versions, logs: nothing is written into the checkout),
warms the cache with 100 tasks (local-files media: 4 shared videos under 100 distinct
task URLs), then lets N clients post /predict with those 100 tasks for a fixed time.
Reports requests/s, p50/p99 latency, errors and the backend worker's RSS before/after.

    PYTHONPATH=. python benchmarks/backend_load.py --clients 8 --tasks 100 --seconds 30

Goal: p99 < 100 ms, zero errors, flat memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "videos"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def serving_pid(process: int) -> int:
    """The process holding the model: the server itself (one process), or its only child if it forks one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == process and "mdsvqa" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return int(entry.name)
    return process


def start_backend(args, workdir: Path, media: Path) -> tuple[subprocess.Popen, str]:
    if args.base and args.adapter:
        base, adapter = args.base, args.adapter
    else:
        sys.path.insert(0, str(REPO))
        from ml_backend.model.tiny import write_tiny_model

        base, adapter = (str(p) for p in write_tiny_model(workdir / "tiny"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDSVQA_", "LABEL_STUDIO_"))}
    env.update({"PYTHONPATH": str(REPO), "MDSVQA_CACHE_DIR": str(workdir / "cache"), "MDSVQA_OFFLINE": "true",
                "HF_HUB_OFFLINE": "1", "MDSVQA_LOCAL_FILES_ROOT": str(media),
                "MDSVQA_THREADS": str(args.threads), "MDSVQA_MODEL_DIR": str(workdir / "models")})
    log = (workdir / "backend.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "ml_backend.cli", "serve", "--base", base, "--adapter", adapter,
                                "--port", str(port)], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"backend exited: see {workdir / 'backend.log'}")
        try:
            if requests.get(url + "/health", timeout=1).json().get("model") == "ready":
                return process, url
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError("backend did not become ready")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per /predict")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=8, help="backend request threads (MDSVQA_THREADS)")
    parser.add_argument("--base")
    parser.add_argument("--adapter")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mdsvqa-bench-"))
    media = workdir / "media"
    media.mkdir()
    names = sorted(p.name for p in VIDEOS.glob("*.mp4"))
    for name in names:
        shutil.copy(VIDEOS / name, media / name)
    label_config = (REPO / "label_config.xml").read_text()
    tasks = [{"id": i + 1, "data": {"video": f"/data/local-files/?d={names[i % len(names)]}&copy={i}"}}
             for i in range(args.tasks)]
    body = json.dumps({"tasks": tasks, "project": "1.1700000000", "label_config": label_config, "params": {}})
    headers = {"Content-Type": "application/json"}

    process, url = start_backend(args, workdir, media)
    try:
        started = time.monotonic()
        warm = requests.post(url + "/predict", data=body, headers=headers, timeout=600).json()
        scored = sum(1 for r in warm["results"] if r)
        warm_s = time.monotonic() - started
        worker = serving_pid(process.pid)
        rss_before = rss_mb(worker)

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        rss_samples: list[float] = []

        def client() -> None:
            session = requests.Session()
            mine: list[float] = []
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                try:
                    response = session.post(url + "/predict", data=body, headers=headers, timeout=30)
                    ok = response.status_code == 200 and all(response.json()["results"])
                    if not ok:
                        with lock:
                            errors.append(f"{response.status_code}: {response.text[:200]}")
                except requests.RequestException as exc:
                    with lock:
                        errors.append(repr(exc))
                mine.append(time.perf_counter() - t0)
            with lock:
                latencies.extend(mine)

        def sample_rss() -> None:
            while time.monotonic() < stop_at:
                rss_samples.append(rss_mb(worker))
                time.sleep(1.0)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        sampler = threading.Thread(target=sample_rss)
        t_start = time.monotonic()
        for thread in [*threads, sampler]:
            thread.start()
        for thread in [*threads, sampler]:
            thread.join()
        elapsed = time.monotonic() - t_start
        rss_after = rss_mb(worker)

        summary = {
            "clients": args.clients, "tasks_per_request": args.tasks, "seconds": round(elapsed, 1),
            "warmup_s": round(warm_s, 1), "warmup_tasks_with_prediction": scored,
            "requests": len(latencies), "requests_per_s": round(len(latencies) / elapsed, 1),
            "tasks_per_s": round(len(latencies) * args.tasks / elapsed),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
            "max_ms": round(1000 * max(latencies), 1),
            "p99_vs_goal_100ms": round(percentile(latencies, 0.99) / 0.1, 2),
            "errors": len(errors),
            "rss_before_mb": round(rss_before, 1), "rss_after_mb": round(rss_after, 1),
            "rss_min_max_during_mb": [round(min(rss_samples), 1), round(max(rss_samples), 1)],
        }
        if args.json:
            print(json.dumps(summary))
        else:
            for key, value in summary.items():
                print(f"{key:>30}: {value}")
            for error in errors[:5]:
                print("error:", error)
        return 0 if not errors else 1
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
