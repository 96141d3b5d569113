"""Benchmark: videos/s of the whole scoring path against its two bounds, decoding and the model.

For each set of videos, in one run:

- ``pipeline``: ``DifficultyScorer.score_paths`` as ``mdsvqa score`` runs it (no cache): the
  decode worker processes (``--workers``, default one per core) prepare videos ahead of the
  model; also with ``--workers 0`` (the in-process decode threads) unless ``--no-threads``.
- ``decode-bound``: the same videos in the same number of worker processes (the same pool
  code), each decoding every frame with libavcodec and nothing else: ``decord`` reads every
  frame up to the last sampled one as RGB, 16 at a time, exactly what the exact path must
  read (decord converts each frame it returns; its skip path is not reliable, see
  docs/performance.md), and ``pyav`` decodes every frame without any conversion (the floor
  of any decoder that must see every frame). One decoder thread per worker, as the scorer's.
- ``workers' whole job``: the scorer's own worker job (decode, resize, patches, the memfd back)
  in its pool, no model: what the workers can deliver; the pipeline's own overhead is its
  distance to min(this, model-bound).
- ``model-bound``: the model alone on inputs prepared beforehand (``answer_videos`` on
  batches of ``batch_size``, the scorer's own batch rules).

The ratio is pipeline / min(decode-bound, model-bound): 100% means the pipeline runs as fast
as its slower part allows, which needs the model on a device of its own (a GPU). Where the
model runs on the same CPU cores as the decoders they cannot overlap, and the bound is the
serial one, 1 / (1/decode + 1/model), printed too. Sets: the shared videos (each listed ``--copies`` times) and
``--hd`` 1080p clips of ``--seconds`` made at run time (PyAV, in a temporary folder). Every
measurement runs after a warm-up (workers started, model loaded, first-call set-up done).

``--split-cores`` gives the model and the decoders cores of their own, as on a GPU host: the
model's process (and its torch threads) on the first half of this process's cores, every
worker on the other half, in every measurement; the in-process threads are not measured then.
There the ratio pipeline / min(decode-bound, model-bound) is the pipeline's overlap.

    python benchmarks/pipeline.py [--workers N] [--hd 4] [--seconds 20] [--copies 4] [--repeats 3] [--transfer]
                                  [--split-cores] [--base DIR --adapter DIR] [--device cuda]

Without ``--base``/``--adapter`` the tiny test model is written to the temporary folder.
``--transfer`` also times one large result through each transport of the worker pool.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VIDEOS = REPO.parent / "shared" / "videos"

# --split-cores: (the model's cores, the workers' cores); None: everything shares every core
PLACEMENT: tuple[set[int], set[int]] | None = None


def split_cores() -> tuple[set[int], set[int]]:
    """The first half of this process's cores for the model, the rest for the workers (one each at least)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 4:  # MDSVQA_DECODE_WORKERS 1 means a thread: worker processes start at 2
        raise SystemExit(f"--split-cores needs at least 4 cores (2 for the model, 2 worker processes); "
                         f"this process may use {len(cores)}")
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


def place_workers(pids: list[int]) -> None:
    """Pin worker processes to the workers' cores (with --split-cores; they start on the model's)."""
    if PLACEMENT is not None:
        for pid in pids:
            os.sched_setaffinity(pid, PLACEMENT[1])


def worker_cpus() -> int:
    return len(PLACEMENT[1]) if PLACEMENT is not None else _cpus()


# -- jobs run in the worker processes (module level: the workers import this module) ------------

def decode_pyav(path: str, threads: int) -> int:
    """Decode every frame, no conversion; the number of frames."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        return sum(1 for _ in container.decode(stream))


def decode_decord(path: str, threads: int) -> int:
    """What the exact path reads: every frame up to the last sampled one, as RGB, 16 at a time."""
    from ml_backend.settings import VideoSettings
    from ml_backend.video import decoding
    from ml_backend.video.sampling import plan_sampling

    settings = VideoSettings()
    decoding.DECODER_THREADS = threads
    reader = decoding._open(Path(path))
    total, fps = len(reader), float(reader.get_avg_fps())
    height, width = reader[0].shape[:2]
    plan = plan_sampling(total, fps, height, width, fps=settings.fps, min_frames=settings.min_frames,
                         max_frames=settings.max_frames, min_pixels=settings.min_pixels,
                         max_pixels=settings.max_pixels, total_pixels=settings.total_pixels,
                         second_per_grid=settings.second_per_grid)
    reader = decoding._open(Path(path))  # a fresh reader, as decode_video reads after its probe of frame 0
    last = plan.indices[-1] + 1
    for start in range(0, last, decoding.DECODE_CHUNK):
        reader.get_batch(list(range(start, min(last, start + decoding.DECODE_CHUNK)))).asnumpy()
    return last


_HELD: dict[int, np.ndarray] = {}


def held_array(size: int) -> np.ndarray:
    """An array of ``size`` bytes kept by the worker, so that only its transfer is timed."""
    if size not in _HELD:
        _HELD.clear()
        _HELD[size] = np.ones(size // 4, dtype=np.float32)
    return _HELD[size]


def warm(threads: int) -> int:
    from ml_backend.video import decoding

    decoding._import_decord()
    return threads


# -- the sets -------------------------------------------------------------------------------------

def make_hd_clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """1920x1080 at 25 fps: the Big Buck Bunny excerpt upscaled and looped, each clip from another offset."""
    import av

    with av.open(str(VIDEOS / "bigbuckbunny.mp4")) as source:
        frames = [f.reformat(width=1920, height=1080, format="yuv420p") for f in source.decode(video=0)]
    paths = []
    for index in range(count):
        path = folder / f"hd1080_{index}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "23"})
            stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
            for i in range(int(seconds * 25)):
                frame = frames[(i + 17 * index) % len(frames)]
                frame.pts = None
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        paths.append(path)
    return paths


# -- measurements ---------------------------------------------------------------------------------

def decode_bound(paths: list[Path], workers: int, kind: str) -> tuple[float, float]:
    """(videos/s, CPU s per video) of ``kind`` decoding in ``workers`` processes of the pool the scorer uses."""
    from ml_backend.procpool import ProcessPool

    jobs = _jobs()
    threads = max(1, worker_cpus() // workers)
    job = jobs.decode_pyav if kind == "pyav" else jobs.decode_decord
    with ProcessPool(workers, start=workers, env={"OMP_NUM_THREADS": "1"}) as pool:
        for future in [pool.submit(jobs.warm, threads) for _ in range(workers * 2)]:
            future.result()
        pool.submit(job, str(paths[0]), threads).result()  # first-call set-up
        pids = pool.pids()
        place_workers(pids)
        start, cpu = time.perf_counter(), _cpu(pids)
        for future in [pool.submit(job, str(path), threads) for path in paths]:
            future.result()
        return len(paths) / (time.perf_counter() - start), (_cpu(pids) - cpu) / len(paths)


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes (Linux /proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _peak_rss_mb(pids: list[int]) -> float:
    """The largest VmHWM (peak resident memory) among these processes, in MB."""
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


def _own_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _jobs():
    """This module under its importable name: the workers cannot import ``__main__``."""
    from benchmarks import pipeline

    return pipeline


def _cpus() -> int:
    from ml_backend.procpool import available_cpus

    return available_cpus()


def make_scorer(args, workers: int):
    from ml_backend.model.loading import resolve_model
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.settings import Settings

    settings = Settings(base=str(args.base), adapter=str(args.adapter), device=args.device, use_cache=False,
                        decode_workers=workers, batch_size=args.batch_size)
    return DifficultyScorer(resolve_model(settings), settings, None)


def pipeline(args, paths: list[Path], workers: int) -> tuple[float, float, float, int, float]:
    """(videos/s, CPU s per video in the model's process, in the workers, failures, workers' peak RSS MB)."""
    scorer = make_scorer(args, workers)
    try:
        # warm-up: model loaded, workers started, every input shape seen once by the model
        list(scorer.score_paths(list(dict.fromkeys(paths))))
        pool = scorer._processes.pool if scorer._processes is not None else None
        pids = pool.pids() if pool is not None else []
        place_workers(pids)
        start, own, theirs = time.perf_counter(), _own_cpu(), _cpu(pids)
        results = list(scorer.score_paths(paths))
        elapsed = time.perf_counter() - start
        own, theirs = _own_cpu() - own, _cpu(pids) - theirs
        peak = _peak_rss_mb(pids)
    finally:
        scorer.close()
    failed = sum(not r.ok for r in results)
    return len(paths) / elapsed, own / len(paths), theirs / len(paths), failed, peak


def prepare_bound(args, paths: list[Path], workers: int) -> tuple[float, float]:
    """(videos/s, workers' CPU s per video) of the workers' whole job (decode, resize, patches, transfer), no model."""
    scorer = make_scorer(args, workers)
    try:
        processes = scorer._processes
        assert processes is not None, "prepare-bound needs worker processes (--workers >= 2)"
        submitter = processes.submitter(len(paths))
        job = processes.job(scorer.settings, scorer.loaded, frame_features=False)
        for future in [submitter.submit(job, (path, "")) for path in dict.fromkeys(paths)]:  # warm-up
            future.result()
        pids = processes.pool.pids() if processes.pool is not None else []
        place_workers(pids)
        start, cpu = time.perf_counter(), _cpu(pids)
        for future in [submitter.submit(job, (path, "")) for path in paths]:
            future.result()
        return len(paths) / (time.perf_counter() - start), (_cpu(pids) - cpu) / len(paths)
    finally:
        scorer.close()


def model_bound(args, paths: list[Path]) -> tuple[float, float]:
    """(videos/s, CPU s per video) of the model alone on inputs prepared beforehand."""
    from ml_backend.scoring.scorer import prepare_video

    scorer = make_scorer(args, 0)
    try:
        distinct = {path: prepare_video(path, scorer.settings, scorer.loaded) for path in dict.fromkeys(paths)}
        inputs = [distinct[path] for path in paths]
        size = args.batch_size
        for i in range(0, len(distinct), size):  # warm-up: every input shape once
            scorer.answer_videos(list(distinct.values())[i:i + size], ["warm-up"] * size)
        start, cpu = time.perf_counter(), _own_cpu()
        for i in range(0, len(inputs), size):
            scorer.answer_videos(inputs[i:i + size], [str(p) for p in paths[i:i + size]])
        return len(inputs) / (time.perf_counter() - start), (_own_cpu() - cpu) / len(inputs)
    finally:
        scorer.close()


def transfer(size: int, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """(wall s, this process's CPU s) to bring one ``size``-byte array from a worker, per transport (medians).

    This process's CPU time is what the model's process pays: with ``pipe`` it copies the bytes
    out of the socket, with ``memfd`` it only maps the worker's file.
    """
    from ml_backend.procpool import ProcessPool, memfd_available

    held = _jobs().held_array
    out = {}
    for transport in ["pipe", *(["memfd"] if memfd_available() else [])]:
        with ProcessPool(1, start=1, transport=transport) as pool:  # type: ignore[arg-type]
            pool.submit(held, size).result()
            walls, cpus = [], []
            for _ in range(repeats):
                start, cpu = time.perf_counter(), time.process_time()
                array = pool.submit(held, size).result()
                float(array[::1024].sum())  # touched: the mapping is usable
                walls.append(time.perf_counter() - start)
                cpus.append(time.process_time() - cpu)
                del array
            out[transport] = (statistics.median(walls), statistics.median(cpus))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None, help="Decode worker processes (default: one per core).")
    parser.add_argument("--hd", type=int, default=4, help="1080p clips to make (0: none).")
    parser.add_argument("--seconds", type=float, default=20.0, help="Length of each 1080p clip.")
    parser.add_argument("--copies", type=int, default=4, help="Times each shared video is listed.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each measurement; the median is reported.")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base", type=Path, help="Base model folder (default: the tiny test model).")
    parser.add_argument("--adapter", type=Path)
    parser.add_argument("--no-threads", action="store_true", help="Skip the in-process (--workers 0) pipeline.")
    parser.add_argument("--transfer", action="store_true", help="Also time a 257 MB result through each transport.")
    parser.add_argument("--split-cores", action="store_true",
                        help="The model on half the cores, the workers on the other half (as with a GPU).")
    args = parser.parse_args()
    global PLACEMENT
    if args.split_cores:
        import torch

        PLACEMENT = split_cores()
        os.sched_setaffinity(0, PLACEMENT[0])  # workers start here too, and are moved once started
        torch.set_num_threads(len(PLACEMENT[0]))
        args.no_threads = True
    workers = args.workers or worker_cpus()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.base is None:
            from ml_backend.model.tiny import write_tiny_model

            args.base, args.adapter = write_tiny_model(folder / "tiny")
        sets = {"shared videos": [p for p in sorted(VIDEOS.glob("*.mp4")) for _ in range(args.copies)]}
        if args.hd:
            start = time.perf_counter()
            sets[f"1080p {args.seconds:.0f} s clips"] = make_hd_clips(folder, args.hd, args.seconds)
            print(f"made {args.hd} 1080p clips of {args.seconds:.0f} s in {time.perf_counter() - start:.0f} s",
                  flush=True)
        measures = {"decord": lambda paths: decode_bound(paths, workers, "decord"),
                    "pyav": lambda paths: decode_bound(paths, workers, "pyav"),
                    "prepare": lambda paths: prepare_bound(args, paths, workers),
                    "model": lambda paths: model_bound(args, paths),
                    "pipeline": lambda paths: pipeline(args, paths, workers)}
        if not args.no_threads:
            measures["threads"] = lambda paths: pipeline(args, paths, 0)
        rows = []
        for name, paths in sets.items():
            runs: dict[str, list[float]] = {}
            failed = 0

            for repeat in range(args.repeats):  # each repeat measures everything once: slow phases of a
                for key, measure in measures.items():  # shared machine spread over all of them
                    value = measure(paths)
                    named = ({key: value[0], f"{key}_cpu": value[1]} if len(value) == 2 else
                             {key: value[0], f"{key}_cpu_model": value[1], f"{key}_cpu_workers": value[2]})
                    for label, number in named.items():
                        runs.setdefault(label, []).append(number)
                    if len(value) > 2:
                        failed = max(failed, int(value[3]))
                        runs.setdefault(f"{key}_rss", []).append(value[4])
                print(f"{name}, repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in runs.items()),
                      flush=True)
            rows.append({"set": name, "videos": len(paths), "failed": failed,
                         **{key: statistics.median(values) for key, values in runs.items()}})
        moved = transfer(257_402_880) if args.transfer else {}

    where = (f"the model's process on cores {sorted(PLACEMENT[0])}, the workers on {sorted(PLACEMENT[1])}"
             if PLACEMENT is not None else f"all sharing {_cpus()} cores")
    print(f"\n{workers} decode workers, {where}, batch {args.batch_size}, model on {args.device}, "
          f"median of {args.repeats}"
          f" ({'tiny test model' if 'tiny' in str(args.base) else args.base}); videos/s\n")
    print("| set | videos | decode-bound: decord, every frame RGB | libavcodec only (PyAV, no conversion) "
          "| workers' whole job, no model | model-bound | pipeline, worker processes "
          "| pipeline / min(decord, model) | pipeline / min(PyAV, model) | pipeline / min(workers' job, model) "
          "| pipeline / serial bound (decord, model) | pipeline, in-process threads |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        threads = f"{r['threads']:.2f}" if "threads" in r else "-"
        failed = f" ({r['failed']} failed)" if r["failed"] else ""
        print(f"| {r['set']} | {r['videos']} | {r['decord']:.2f} | {r['pyav']:.2f} | {r['prepare']:.2f} "
              f"| {r['model']:.2f} | {r['pipeline']:.2f}{failed} "
              f"| {100 * r['pipeline'] / min(r['decord'], r['model']):.0f}% "
              f"| {100 * r['pipeline'] / min(r['pyav'], r['model']):.0f}% "
              f"| {100 * r['pipeline'] / min(r['prepare'], r['model']):.0f}% "
              f"| {100 * r['pipeline'] * (1 / r['decord'] + 1 / r['model']):.0f}% | {threads} |")
    print("\nCPU seconds per video (all processes: the model's and the workers'), medians; the pipeline's "
          "overhead is its CPU over decord's + the model's\n")
    print("| set | decode (decord, every frame RGB) | libavcodec only (PyAV) | workers' whole job | model "
          "| pipeline: model's process | pipeline: workers | pipeline / (decord + model) | threads pipeline "
          "| a worker's peak RSS (MB) | CPU-bound limit: cores / (workers' job + model), videos/s | pipeline / that |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    def limit(r: dict) -> float:  # the work on the cores it may use (the model's too, when it runs on the CPU)
        model_cpu = r["model_cpu"] if args.device == "cpu" else 0.0
        if PLACEMENT is None:
            return _cpus() / (r["prepare_cpu"] + model_cpu)
        workers_limit = len(PLACEMENT[1]) / r["prepare_cpu"]
        return min(workers_limit, len(PLACEMENT[0]) / model_cpu) if model_cpu else workers_limit

    for r in rows:
        total = r["pipeline_cpu_model"] + r["pipeline_cpu_workers"]
        threads = f"{r['threads_cpu_model']:.2f}" if "threads_cpu_model" in r else "-"
        print(f"| {r['set']} | {r['decord_cpu']:.2f} | {r['pyav_cpu']:.2f} | {r['prepare_cpu']:.2f} "
              f"| {r['model_cpu']:.2f} "
              f"| {r['pipeline_cpu_model']:.2f} | {r['pipeline_cpu_workers']:.2f} "
              f"| {100 * total / (r['decord_cpu'] + r['model_cpu']):.0f}% | {threads} | {r['pipeline_rss']:.0f} "
              f"| {limit(r):.2f} | {100 * r['pipeline'] / limit(r):.0f}% |")
    if moved:
        print("\n| transport | 257 MB result, worker to parent: wall (s) | parent CPU (s) |\n| --- | --- | --- |")
        for transport, (wall, cpu) in moved.items():
            print(f"| {transport} | {wall:.3f} | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
