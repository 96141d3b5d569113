"""Benchmark: fast exact greedy selection vs the per-pair reference.

Synthetic clustered pools (``selection_data.py``: L2-normalised 512-d frames, 16 per
video, difficulty uniform on [1, 5] with two decimals). Each configuration runs in its own
subprocess so its peak resident memory is its own: VmHWM (which, unlike tracemalloc, sees torch's
allocations), reset after the pool is generated so the generator's scratch memory is not
counted; the pool itself stays resident, is part of that peak and is reported separately
("data"). Where the reset is refused, the whole process's ru_maxrss is reported.

The fast version is timed after a 3-video warm-up call (torch's first-call setup is a
per-process cost, reported as warm_up_seconds in --json). The reference runs only where its estimated time (measured per-pair cost x pairs) is
under ``--reference-limit``; otherwise the table says "skipped: would take ~X". Where both
run, the picks are compared.

    python benchmarks/selection.py            # N in {2000, 20000, 100000} x K in {64, 1000}
    python benchmarks/selection.py --quick    # N=2000 K=64 with the reference, N=20000 K=64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _rss_mb() -> float:
    """Current resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux >= 4.0: VmHWM), so data generation is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(window: bool) -> float:
    if window:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux, whole process


def _digest(picks) -> str:
    return hashlib.sha1(json.dumps([int(p) for p in picks]).encode()).hexdigest()[:12]


def worker(args: argparse.Namespace) -> None:
    """Run one configuration and print one JSON line."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    import numpy as np

    from selection_data import synthetic_pool

    started = time.perf_counter()
    difficulty, frames, offsets = synthetic_pool(args.n, seed=args.seed, difficulty=args.difficulty)
    data_seconds = time.perf_counter() - started
    if args.worker == "fast":
        import torch  # noqa: F401  (its import is part of the run's footprint, not of the data)
    data_rss = _rss_mb()
    window = _reset_peak_rss()
    record = {"impl": args.worker, "n": args.n, "k": args.k, "data_seconds": round(data_seconds, 2),
              "data_rss_mb": round(data_rss, 1)}
    if args.worker == "per-pair-cost":
        from selection.chamfer import chamfer_distance

        rng = np.random.default_rng(1)
        pairs = rng.integers(0, args.n, size=(args.pairs, 2))
        started = time.perf_counter()
        for a, b in pairs:
            chamfer_distance(frames[offsets[a] : offsets[a + 1]], frames[offsets[b] : offsets[b + 1]])
        record["seconds_per_pair"] = (time.perf_counter() - started) / len(pairs)
    else:
        if args.worker == "fast":
            from selection.greedy import select_greedy

            # Warm-up on 3 videos: torch's first call initialises MKL and its thread pool
            # (0.1-0.7 s here), a fixed cost of the process, not of the algorithm.
            started = time.perf_counter()
            select_greedy([1.0, 2.0, 3.0], [frames[:2], frames[2:4], frames[4:6]], 2, device=args.device)
            record["warm_up_seconds"] = round(time.perf_counter() - started, 3)
            started = time.perf_counter()
            result = select_greedy(difficulty, frames, args.k, args.lam, offsets=offsets, device=args.device,
                                   store_dtype=args.store_dtype, prune=not args.no_prune)
        else:
            from selection.reference import reference_select

            started = time.perf_counter()
            result = reference_select(difficulty, frames, args.k, args.lam, offsets=offsets)
        record.update(seconds=round(time.perf_counter() - started, 3), picks_digest=_digest(result.picks),
                      first_picks=[int(p) for p in result.picks[:5]], distance_evaluations=result.distance_evaluations,
                      stats=result.stats)
    record["peak_rss_mb"] = round(_peak_rss_mb(window), 1)
    record["peak_window"] = "selection only (VmHWM reset after the data)" if window else "whole process"
    print(json.dumps(record), flush=True)


def _run_worker(impl: str, n: int, k: int, args: argparse.Namespace, **extra) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--n", str(n), "--k", str(k),
               "--lam", str(args.lam), "--device", args.device, "--store-dtype", args.store_dtype,
               "--difficulty", args.difficulty, "--seed", str(args.seed)]
    if args.no_prune:
        command.append("--no-prune")
    for key, value in extra.items():
        command += [f"--{key}", str(value)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"worker {impl} N={n} K={k} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Only N=2000 K=64 (with reference) and N=20000 K=64.")
    parser.add_argument("--sizes", default="2000,20000,100000", help="Pool sizes N (comma separated).")
    parser.add_argument("--budgets", default="64,1000", help="Budgets K (comma separated).")
    parser.add_argument("--lam", type=float, default=0.25)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--store-dtype", default="float32", choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--no-prune", action="store_true", help="Update every video at every step.")
    parser.add_argument("--difficulty", default="uniform", choices=["uniform", "normal", "constant"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference-limit", type=float, default=120.0,
                        help="Run the per-pair reference only when its estimated time is below this (s).")
    parser.add_argument("--json", metavar="FILE", help="Also write all records to FILE.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    configs = ([(2000, 64), (20000, 64)] if args.quick else
               [(int(n), int(k)) for n in args.sizes.split(",") for k in args.budgets.split(",")])
    per_pair = _run_worker("per-pair-cost", 2000, 0, args)["seconds_per_pair"]
    print(f"per-pair reference: {per_pair * 1e6:.0f} us per Chamfer distance (16 x 16 frames, dim 512)")
    print(f"options: lam={args.lam} device={args.device} store={args.store_dtype} prune={not args.no_prune} "
          f"difficulty={args.difficulty}")
    header = f"{'N':>7} {'K':>5} | {'fast':>9} {'peak MB':>8} {'data MB':>8} | {'reference':>24} | {'speed-up':>8} | same picks"
    print(header)
    print("-" * len(header))
    records = []
    for n, k in configs:
        fast = _run_worker("fast", n, k, args)
        pairs = k * n - k * (k + 1) // 2
        estimate = pairs * per_pair
        reference = None
        if args.quick and n > 2000:
            ref_text = f"skipped: ~{_human(estimate)}"
        elif estimate <= args.reference_limit:
            reference = _run_worker("reference", n, k, args)
            ref_text = f"{reference['seconds']:.2f} s"
        else:
            ref_text = f"skipped: would take ~{_human(estimate)}"
        speedup = f"{reference['seconds'] / fast['seconds']:.0f}x" if reference else "-"
        same = ("yes" if reference["picks_digest"] == fast["picks_digest"] else "NO") if reference else "-"
        print(f"{n:>7} {k:>5} | {fast['seconds']:>7.2f} s {fast['peak_rss_mb']:>8.0f} {fast['data_rss_mb']:>8.0f} | "
              f"{ref_text:>24} | {speedup:>8} | {same}", flush=True)
        records.append({"fast": fast, "reference": reference, "reference_estimate_seconds": estimate})
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
