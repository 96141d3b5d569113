"""Benchmark: fast exact greedy selection vs the per-pair reference.

Synthetic clustered pools (``selection_data.py``: L2-normalised 512-d frames, 16 per
video by default, ``--frames`` otherwise, difficulty uniform on [1, 5] with two decimals).
Each configuration runs in its own subprocess so its peak resident memory is its own:
VmHWM (which, unlike tracemalloc, sees torch's
allocations), reset after the pool is generated so the generator's scratch memory is not
counted; the pool itself stays resident, is part of that peak and is reported separately
("data"). Where the reset is refused, the whole process's ru_maxrss is reported.

The fast version is timed after a 3-video warm-up call (torch's first-call setup is a
per-process cost, reported as warm_up_seconds in --json). The reference runs only where
its estimated time (measured per-pair cost x pairs) is under ``--reference-limit``;
otherwise the table says "skipped: would take ~X". Where both run, the picks are compared.

    python benchmarks/selection.py            # N in {2000, 20000, 100000} x K in {64, 1000}
    python benchmarks/selection.py --quick    # N=2000 K=64 with the reference, N=20000 K=64
    python benchmarks/selection.py --paper --reference-steps 3 --compare-dtypes float16,bfloat16
        # the paper's case: every frame of 10 s clips (F = 300), K = 64, N = 1.6k and 20k

``--reference-steps S``: where the full per-pair reference would take longer than
``--reference-limit``, run it for its first S picks only (the greedy's picks for budget S
are the first S of any larger budget), compare those with the fast picks, and extrapolate
its time to K picks from the measured seconds per Chamfer distance (printed as such).
``--compare-dtypes``: also run the fast version with those store dtypes and say how their
picks differ from the float32 ones. A case whose frames would not fit in the available
memory is skipped with its size (``--force`` runs it anyway).
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
    difficulty, frames, offsets = synthetic_pool(args.n, seed=args.seed, difficulty=args.difficulty,
                                                 frames_per_video=args.frames)
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
                      stats=result.stats, picks=[int(p) for p in result.picks],
                      objectives=[float(v) for v in result.objectives])
    record["peak_rss_mb"] = round(_peak_rss_mb(window), 1)
    record["peak_window"] = "selection only (VmHWM reset after the data)" if window else "whole process"
    print(json.dumps(record), flush=True)


def _run_worker(impl: str, n: int, k: int, args: argparse.Namespace, **extra) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--n", str(n), "--k", str(k),
               "--lam", str(args.lam), "--device", args.device, "--store-dtype", args.store_dtype,
               "--difficulty", args.difficulty, "--seed", str(args.seed), "--frames", str(args.frames)]
    if args.no_prune:
        command.append("--no-prune")
    for key, value in extra.items():
        index = command.index(f"--{key}") if f"--{key}" in command else -1
        if index >= 0:
            command[index + 1] = str(value)
        else:
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


def _pairs(n: int, k: int) -> int:
    """Chamfer distances the per-pair greedy computes for K picks out of N (no seed)."""
    k = min(k, n)
    return (k - 1) * n - (k - 1) * k // 2 if k > 0 else 0


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _dtype_effect(base: dict, other: dict) -> str:
    a, b = base["picks"], other["picks"]
    same_prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    overlap = len(set(a) & set(b))
    if a == b:
        gap = max((abs(x - y) for x, y in zip(base["objectives"], other["objectives"])), default=0.0)
        return f"same {len(a)} picks in the same order (objectives within {gap:.1e})"
    return f"first {same_prefix} picks equal, then they differ; {overlap}/{len(a)} picks in common"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Only N=2000 K=64 (with reference) and N=20000 K=64.")
    parser.add_argument("--paper", action="store_true",
                        help="The paper's case: F=300 frames per video, K=64, N in {1600, 20000} (unless --sizes).")
    parser.add_argument("--sizes", help="Pool sizes N (comma separated; default 2000,20000,100000).")
    parser.add_argument("--budgets", help="Budgets K (comma separated; default 64,1000).")
    parser.add_argument("--frames", type=int, help="Frames per video F (default 16; 300 with --paper).")
    parser.add_argument("--reference-steps", type=int, default=0, metavar="S",
                        help="Where the full reference is over --reference-limit: run its first S picks, compare "
                        "them, extrapolate its time to K picks.")
    parser.add_argument("--compare-dtypes", default="", metavar="LIST",
                        help="Also run the fast version with these store dtypes (e.g. float16,bfloat16) and compare "
                        "their picks with float32's.")
    parser.add_argument("--force", action="store_true", help="Run cases that may not fit in the available memory.")
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
    if args.frames is None:
        args.frames = 300 if args.paper and not args.worker else 16
    if args.worker:
        worker(args)
        return

    sizes = args.sizes or ("1600,20000" if args.paper else "2000,20000,100000")
    budgets = args.budgets or ("64" if args.paper else "64,1000")
    configs = ([(2000, 64), (20000, 64)] if args.quick else
               [(int(n), int(k)) for n in sizes.split(",") for k in budgets.split(",")])
    dtypes = [d for d in args.compare_dtypes.split(",") if d]
    per_pair = _run_worker("per-pair-cost", min(n for n, _ in configs), 0, args,
                           pairs=300 if args.frames <= 64 else 40)["seconds_per_pair"]
    print(f"per-pair reference: {per_pair * 1e3:.2f} ms per Chamfer distance ({args.frames} x {args.frames} frames, "
          "dim 512)")
    print(f"options: lam={args.lam} device={args.device} store={args.store_dtype} prune={not args.no_prune} "
          f"difficulty={args.difficulty} frames/video={args.frames}")
    header = (f"{'N':>7} {'K':>5} | {'fast':>9} {'peak MB':>8} {'data MB':>8} | {'reference':>24} | {'speed-up':>8} "
              "| same picks")
    print(header)
    print("-" * len(header))
    records = []
    notes = []
    for n, k in configs:
        data_mb = n * args.frames * 512 * 4 / 2**20
        need_mb = 1.5 * data_mb + 1024  # measured: peak ~ frames + a third (active copy, centres) + torch
        if not args.force and need_mb > _available_mb():
            print(f"{n:>7} {k:>5} | skipped: its frames take {data_mb / 1024:.1f} GB (float32), "
                  f"~{need_mb / 1024:.0f} GB at peak, {_available_mb() / 1024:.1f} GB are available; --force runs it",
                  flush=True)
            continue
        fast = _run_worker("fast", n, k, args)
        pairs = _pairs(n, k)
        estimate = pairs * per_pair
        reference = None
        partial = None
        if args.quick and n > 2000:
            ref_text = f"skipped: ~{_human(estimate)}"
        elif estimate <= args.reference_limit:
            reference = _run_worker("reference", n, k, args)
            ref_text = f"{reference['seconds']:.2f} s"
        elif args.reference_steps > 0:
            steps = min(args.reference_steps, k)
            partial = _run_worker("reference", n, steps, args)
            per_distance = partial["seconds"] / max(1, partial["distance_evaluations"])
            extrapolated = per_distance * pairs
            ref_text = f"~{_human(extrapolated)} (extrap.)"
            notes.append(f"N={n} K={k}: reference run for its first {steps} picks only ({partial['seconds']:.1f} s, "
                         f"{partial['distance_evaluations']} distances, {per_distance * 1e3:.2f} ms each); "
                         f"extrapolated to the {pairs} distances of K={k}: ~{_human(extrapolated)}")
        else:
            ref_text = f"skipped: would take ~{_human(estimate)}"
        if reference:
            speedup = f"{reference['seconds'] / fast['seconds']:.0f}x"
            gap = max((abs(a - b) for a, b in zip(reference["objectives"], fast["objectives"])), default=0.0)
            same = f"yes (objectives within {gap:.0e})" if reference["picks"] == fast["picks"] else "NO"
        elif partial:
            speedup = f"~{extrapolated / fast['seconds']:.0f}x"
            steps = len(partial["picks"])
            gap = max(abs(a - b) for a, b in zip(partial["objectives"], fast["objectives"]))
            same = (f"yes, first {steps} (objectives within {gap:.0e})"
                    if partial["picks"] == fast["picks"][:steps] else "NO")
        else:
            speedup, same = "-", "-"
        print(f"{n:>7} {k:>5} | {fast['seconds']:>7.2f} s {fast['peak_rss_mb']:>8.0f} {fast['data_rss_mb']:>8.0f} | "
              f"{ref_text:>24} | {speedup:>8} | {same}", flush=True)
        record = {"fast": fast, "reference": reference, "reference_partial": partial,
                  "reference_estimate_seconds": estimate}
        for dtype in dtypes:
            other = _run_worker("fast", n, k, args, **{"store-dtype": dtype})
            effect = _dtype_effect(fast, other)
            record[f"fast_{dtype}"] = other
            print(f"{'':>7} {'':>5} |   store {dtype}: {other['seconds']:.2f} s, peak {other['peak_rss_mb']:.0f} MB: "
                  f"{effect} vs {args.store_dtype}", flush=True)
        records.append(record)
    for note in notes:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
