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

Pool scale (``--pool N``): frames that do not fit in memory, streamed from disk.

    python benchmarks/selection.py --pool 20000 --frames 300 --baseline 2000 --working-set 1G,256M

writes a synthetic pool (the same clustered unit-norm 512-d frames, generated 128 videos at a
time) as packed ``.npy`` files in a temporary folder (``--dir``; removed afterwards unless
``--keep``), in float32 and float16, then times in separate processes: the in-memory float32
path on a baseline pool of ``--baseline`` videos that fits (the ratio's denominator, measured
in the same run), the streamed float32 path on that same baseline pool (it must give the
in-memory result bit for bit), and the streamed float32 and float16 paths on the N-video pool
for each ``--working-set``. Peak RSS is VmHWM from after the imports (and, in memory, after
loading the frames, which stay resident and are counted). With ``--cold`` (default) the file's
pages are dropped from the page cache before each streamed run (``posix_fadvise``), so its
reads come from the disk. The in-memory path on the N-video pool runs only if it fits.

Rounding study (``--rounding-study``): how often float16 / bfloat16 stores pick otherwise than
float32, over ``--study-pools`` seeded pools of each kind (clustered CLIP-like frames with
two-decimal scores, the same with one-decimal scores, unclustered random unit-norm frames):

    python benchmarks/selection.py --rounding-study --sizes 2000 --frames 16 --budgets 64
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
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


# ---- pool scale: frames on disk, streamed ------------------------------------------------------

DIM = 512
_GENERATE_VIDEOS = 128  # videos generated (and written) at a time


def write_pool(folder: Path, n: int, frames_per_video: int, seed: int, dtypes=("float32", "float16")) -> dict:
    """A synthetic clustered pool on disk, one packed .npy per dtype, written block by block.

    Same distribution as ``selection_data.synthetic_pool`` (clusters, per-video centres, per-frame
    scatter, L2-normalised 512-d frames, difficulty uniform on [1, 5] with two decimals), never
    more than ``_GENERATE_VIDEOS`` videos in memory.
    """
    sys.path[:0] = [str(ROOT)]
    import numpy as np

    from selection.framefile import FrameFileWriter

    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_clusters = max(8, n // 250)
    clusters = rng.standard_normal((n_clusters, DIM)).astype(np.float32)
    clusters /= np.linalg.norm(clusters, axis=1, keepdims=True)
    video_spread, frame_spread = 0.5 / np.sqrt(DIM), 0.3 / np.sqrt(DIM)
    writers = {dtype: FrameFileWriter(folder / f"frames_{dtype}.npy", DIM, dtype) for dtype in dtypes}
    for start in range(0, n, _GENERATE_VIDEOS):
        count = min(_GENERATE_VIDEOS, n - start)
        centres = clusters[rng.integers(0, n_clusters, count)]
        centres = centres + video_spread * rng.standard_normal(centres.shape, dtype=np.float32)
        block = np.repeat(centres[:, None, :], frames_per_video, axis=1)
        block += frame_spread * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=2, keepdims=True)
        for writer in writers.values():
            writer.append(block.reshape(-1, DIM))
    for writer in writers.values():
        writer.close(sync=True)
    difficulty = np.round(rng.uniform(1.0, 5.0, n), 2)
    offsets = np.arange(n + 1, dtype=np.int64) * frames_per_video
    np.savez(folder / "meta.npz", difficulty=difficulty, offsets=offsets)
    return {"folder": str(folder), "n": n, "frames": frames_per_video,
            "seconds": round(time.perf_counter() - started, 1),
            "files": {dtype: str(folder / f"frames_{dtype}.npy") for dtype in dtypes},
            "bytes": {dtype: (folder / f"frames_{dtype}.npy").stat().st_size for dtype in dtypes}}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (less sensitive than wall time to other jobs on the machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _written(folder: Path) -> dict:
    """A pool ``write_pool`` wrote earlier (``--reuse``)."""
    import numpy as np

    offsets = np.load(folder / "meta.npz")["offsets"]
    files = {dtype: folder / f"frames_{dtype}.npy" for dtype in ("float32", "float16")}
    return {"folder": str(folder), "n": len(offsets) - 1, "frames": int(offsets[1] - offsets[0]), "seconds": 0.0,
            "files": {dtype: str(path) for dtype, path in files.items()},
            "bytes": {dtype: path.stat().st_size for dtype, path in files.items()}}


def _drop_from_page_cache(path: str) -> None:
    """Evict the file's pages (this file only), so the next reads come from the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def pool_worker(args: argparse.Namespace) -> None:
    """One run on a pool on disk (``--worker streamed`` or ``memory-file``); prints one JSON line."""
    sys.path[:0] = [str(ROOT)]
    import numpy as np
    import torch  # noqa: F401  (its import is part of the footprint of both)

    from selection.greedy import select_greedy

    meta = np.load(args.meta)
    difficulty, offsets = meta["difficulty"], meta["offsets"]
    # Warm-up on 3 videos: torch's first call initialises MKL and its thread pool.
    warm = np.eye(6, DIM, dtype=np.float32)
    select_greedy([1.0, 2.0, 3.0], [warm[:2], warm[2:4], warm[4:6]], 2)
    start_rss = _rss_mb()  # python, torch and its libraries
    frames = np.load(args.file) if args.worker == "memory-file" else args.file
    data_rss = _rss_mb()
    window = _reset_peak_rss()
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    if args.worker == "memory-file":
        result = select_greedy(difficulty, frames, args.k, args.lam, offsets=offsets, store_dtype=args.store_dtype)
    else:
        result = select_greedy(difficulty, frames, args.k, args.lam, offsets=offsets, store_dtype=args.store_dtype,
                               working_set_bytes=args.working_set_bytes)
    record = {"impl": args.worker, "n": len(offsets) - 1, "k": args.k, "store_dtype": args.store_dtype,
              "working_set_bytes": args.working_set_bytes, "seconds": round(time.perf_counter() - started, 2),
              "cpu_seconds": round(_cpu_seconds() - cpu_started, 2),
              "start_rss_mb": round(start_rss, 1), "data_rss_mb": round(data_rss, 1),
              "peak_rss_mb": round(_peak_rss_mb(window), 1),
              "distance_evaluations": result.distance_evaluations, "stats": result.stats,
              "load_average": os.getloadavg()[0],
              "picks": [int(p) for p in result.picks], "objectives": [float(v) for v in result.objectives]}
    print(json.dumps(record), flush=True)


def _pool_run(impl: str, file: str, meta: str, args: argparse.Namespace, store_dtype: str,
              working_set: int | None = None) -> dict:
    if impl == "streamed" and args.cold:
        _drop_from_page_cache(file)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", impl, "--file", file, "--meta", meta,
               "--k", str(args.k_pool), "--lam", str(args.lam), "--store-dtype", store_dtype]
    if working_set is not None:
        command += ["--working-set-bytes", str(working_set)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"worker {impl} {file} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    return int(float(text[:-1]) * units[text[-1]]) if text and text[-1] in units else int(text)


def _gb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB"


def _same(record: dict, reference: dict) -> str:
    if record["picks"] == reference["picks"] and record["objectives"] == reference["objectives"]:
        return "identical (bit for bit)"
    return _dtype_effect(reference, record)


def run_pool(args: argparse.Namespace) -> None:
    """Pool-scale mode: see the module docstring."""
    working_sets = [_size(text) for text in args.working_set.split(",")]
    folder = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="selection-pool-", dir=args.dir))
    records: dict = {"pool": args.pool, "frames": args.frames, "k": args.k_pool, "baseline": args.baseline,
                     "working_sets": working_sets, "cold": args.cold, "runs": []}
    rows: list[str] = []

    def row(label: str, n: int, record: dict, ratio_to: dict | None, same: str) -> None:
        ws = record.get("working_set_bytes")
        ws_text = f"{ws / 2**20:.0f} MiB" if ws else "-"
        ratio = (f"{record['seconds'] / ratio_to['seconds']:.2f}x time, "
                 f"{record['peak_rss_mb'] / ratio_to['peak_rss_mb']:.2f}x RSS") if ratio_to else "baseline"
        per = record["seconds"] / max(1, record["distance_evaluations"]) * 1e3
        cpu = f"{record['cpu_seconds']:.1f} s" if "cpu_seconds" in record else "-"
        if ratio_to and "cpu_seconds" in record and "cpu_seconds" in ratio_to:
            ratio = f"{record['cpu_seconds'] / ratio_to['cpu_seconds']:.2f}x CPU, " + ratio
        read = record["stats"].get("frames_read", 0) * DIM * (2 if record["store_dtype"] == "float16" else 4)
        line = (f"| {n:,} | {label} | {ws_text} | {record['seconds']:.1f} s | {cpu} | {per:.2f} ms | "
                f"{_gb(record['peak_rss_mb'])} | {read / 2**30:.1f} GiB | {ratio} | {same} | "
                f"{record['load_average']:.1f} |")
        rows.append(line)
        print(line, flush=True)
        records["runs"].append({"label": label, **record})

    try:
        if args.reuse:
            base, pool = _written(folder / "baseline"), _written(folder / "pool")
            args.baseline, args.pool = base["n"], pool["n"]
        else:
            print(f"writing the pools under {folder} ...", flush=True)
            base = write_pool(folder / "baseline", args.baseline, args.frames, args.seed + 1)
            pool = write_pool(folder / "pool", args.pool, args.frames, args.seed)
        records["written"] = {"baseline": base, "pool": pool}
        for name, written in (("baseline", base), ("pool", pool)):
            sizes = ", ".join(f"{dtype} {size / 2**30:.2f} GiB" for dtype, size in written["bytes"].items())
            print(f"{name}: N={written['n']:,} F={written['frames']} dim {DIM}: {sizes} on disk, "
                  f"written in {written['seconds']} s", flush=True)
        print(f"K={args.k_pool} lam={args.lam}; {'cold' if args.cold else 'warm'} page cache for streamed runs")
        print("| N | store | working set | time | CPU | time per distance | peak RSS | read | vs in-memory float32 "
              "at the baseline N | result | load |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |")
        base_meta, pool_meta = str(Path(base["folder"]) / "meta.npz"), str(Path(pool["folder"]) / "meta.npz")
        memory = _pool_run("memory-file", base["files"]["float32"], base_meta, args, "float32")
        row("in memory, float32", args.baseline, memory, None, "(reference)")
        for ws in working_sets:
            streamed = _pool_run("streamed", base["files"]["float32"], base_meta, args, "float32", ws)
            row("streamed, float32", args.baseline, streamed, memory, _same(streamed, memory))
        half = _pool_run("streamed", base["files"]["float16"], base_meta, args, "float16", working_sets[0])
        row("streamed, float16", args.baseline, half, memory, _same(half, memory) + " vs float32")
        exact = None
        for ws in working_sets:
            streamed = _pool_run("streamed", pool["files"]["float32"], pool_meta, args, "float32", ws)
            if exact is None:
                exact, same = streamed, "(float32 picks at this N)"
            else:
                same = _same(streamed, exact) + " vs the first working set"
            row("streamed, float32", args.pool, streamed, memory, same)
        half = _pool_run("streamed", pool["files"]["float16"], pool_meta, args, "float16", working_sets[0])
        assert exact is not None
        row("streamed, float16", args.pool, half, memory, _same(half, exact) + " vs float32")
        need_mb = 1.5 * pool["bytes"]["float32"] / 2**20 + 1024
        if need_mb < _available_mb() or args.force:
            in_memory = _pool_run("memory-file", pool["files"]["float32"], pool_meta, args, "float32")
            row("in memory, float32", args.pool, in_memory, memory, _same(in_memory, exact) + " vs streamed")
        else:
            line = (f"| {args.pool:,} | in memory, float32 | - | not run: needs ~{need_mb / 1024:.0f} GB, "
                    f"{_available_mb() / 1024:.0f} GB available | | | | | | | |")
            rows.append(line)
            print(line)
        imports = min(run["start_rss_mb"] for run in records["runs"])
        print(f"peak RSS counts the process from its start: python, torch and its libraries alone take "
              f"{_gb(imports)}; the in-memory runs also hold their frames")
    finally:
        if args.keep or args.reuse:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2) + "\n")


def rounding_study(args: argparse.Namespace) -> None:
    """How often half-precision stores pick otherwise than float32 (in memory, one process)."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    import numpy as np
    from selection_data import synthetic_pool

    from selection.greedy import select_greedy

    n = int((args.sizes or "2000").split(",")[0])
    k = int((args.budgets or "64").split(",")[0])
    frames_per_video = args.frames

    def pool(kind: str, seed: int):
        difficulty, frames, offsets = synthetic_pool(n, seed=seed, frames_per_video=frames_per_video)
        if kind == "clustered, 1-decimal scores":
            difficulty = np.round(difficulty, 1)
        elif kind == "random unit-norm":
            rng = np.random.default_rng(seed + 10**6)
            frames = rng.standard_normal(frames.shape, dtype=np.float32)
            frames /= np.linalg.norm(frames, axis=1, keepdims=True)
        return difficulty, frames, offsets

    kinds = ["clustered, 2-decimal scores", "clustered, 1-decimal scores", "random unit-norm"]
    print(f"rounding study: {args.study_pools} pools per kind, N={n} F={frames_per_video} K={k} lam={args.lam}")
    print("| pools | store | same picks, same order | same set | first difference (median step) | picks in "
          "common (worst) | objective gap, same picks | bound (stats) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = []
    for kind in kinds:
        results: dict[str, list] = {"float16": [], "bfloat16": []}
        for seed in range(args.study_pools):
            difficulty, frames, offsets = pool(kind, seed)
            base = select_greedy(difficulty, frames, k, args.lam, offsets=offsets)
            for dtype in results:
                other = select_greedy(difficulty, frames, k, args.lam, offsets=offsets, store_dtype=dtype)
                a, b = base.picks.tolist(), other.picks.tolist()
                first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
                gap = float(np.abs(base.objectives - other.objectives).max()) if a == b else None
                results[dtype].append({"same": a == b, "same_set": set(a) == set(b), "first": first,
                                       "common": len(set(a) & set(b)), "gap": gap,
                                       "bound": other.stats["objective_error_bound"]})
        for dtype, runs in results.items():
            same = sum(r["same"] for r in runs)
            firsts = [r["first"] for r in runs if r["first"] is not None]
            gaps = [r["gap"] for r in runs if r["gap"] is not None]
            median_first = str(int(np.median(firsts))) if firsts else "-"
            gap_text = f"{max(gaps):.1e}" if gaps else "-"
            line = (f"| {kind} | {dtype} | {same}/{len(runs)} | {sum(r['same_set'] for r in runs)}/{len(runs)} | "
                    f"{median_first} | {min(r['common'] for r in runs)}/{k} | {gap_text} | "
                    f"{max(r['bound'] for r in runs):.1e} |")
            print(line, flush=True)
            summary.append({"kind": kind, "dtype": dtype, "runs": runs})
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


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
    parser.add_argument("--pool", type=int, metavar="N",
                        help="Pool scale: an N-video pool written to disk and streamed (see the module docstring).")
    parser.add_argument("--baseline", type=int, default=2000, metavar="N",
                        help="--pool: size of the in-memory baseline pool, streamed too (default 2000).")
    parser.add_argument("--working-set", default="1G", metavar="SIZES",
                        help="--pool: working-set budgets of the streamed runs, e.g. 1G,256M (default 1G).")
    parser.add_argument("--pool-budget", dest="k_pool", type=int, default=64, metavar="K",
                        help="--pool: budget K (default 64).")
    parser.add_argument("--dir", help="--pool: where the temporary pool folder goes (default: the system's temp).")
    parser.add_argument("--keep", action="store_true", help="--pool: keep the pool files.")
    parser.add_argument("--reuse", metavar="DIR",
                        help="--pool: time the pools a --keep run left in DIR (baseline/, pool/) instead of writing.")
    parser.add_argument("--warm", dest="cold", action="store_false",
                        help="--pool: leave the frames files in the page cache (default: dropped before each run).")
    parser.add_argument("--rounding-study", action="store_true",
                        help="How often float16/bfloat16 stores pick otherwise than float32 (see the docstring).")
    parser.add_argument("--study-pools", type=int, default=10, help="--rounding-study: pools per kind (default 10).")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--meta", help=argparse.SUPPRESS)
    parser.add_argument("--working-set-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", type=int, default=300, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frames is None:
        args.frames = 300 if (args.paper or args.pool or args.reuse) and not args.worker else 16
    if args.worker in ("streamed", "memory-file"):
        pool_worker(args)
        return
    if args.worker:
        worker(args)
        return
    if args.pool or args.reuse:
        run_pool(args)
        return
    if args.rounding_study:
        rounding_study(args)
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
