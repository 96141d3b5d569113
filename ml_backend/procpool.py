"""A pool of worker processes for CPU-bound preparation (video decoding), one job per worker at a time.

Why not ``concurrent.futures.ProcessPoolExecutor``: when one of its workers dies (the kernel's
OOM killer sends SIGKILL) the executor is broken and every pending job fails with it. Here
each worker is fed by its own thread in the parent, which knows the one job it handed over:
a dead worker fails exactly that job (:class:`WorkerDiedError`), a new worker takes its
place and the pool goes on.

Workers are plain ``python -c`` children (``subprocess``, fork + exec: no copy of the parent's
threads, locks or CUDA state, and no re-import of the parent's ``__main__``), each connected
by a Unix socket pair. A worker ignores SIGINT (Ctrl-C reaches the whole process group; the
parent decides), asks the kernel to kill it when its feeder thread goes (``PR_SET_PDEATHSIG``,
Linux), exits when its socket closes, and is stopped after ``idle_s`` without work (started
again on the next job).

Results travel as pickle protocol 5 with out-of-band buffers: a numpy array of 64 KiB or more
is not copied into the pickle but sent on its own, either as a ``memfd`` (Linux: the worker
writes the bytes once into an anonymous shared-memory file and passes its descriptor; the
parent maps it and the array lives in that mapping, no copy in the parent; not limited by the
size of /dev/shm, which is 64 MB in a default Docker container) or over the socket (``pipe``:
one copy by the kernel into an array allocated for it). ``docs/performance.md`` compares them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import mmap
import os
import pickle
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import MdsVqaError

log = logging.getLogger(__name__)

Transport = Literal["memfd", "pipe"]

OUT_OF_BAND_MIN = 64 * 1024  # smaller buffers stay inside the pickle
IDLE_S = 300.0  # a worker without work this long exits (memory back); the next job starts a new one
START_TIMEOUT_S = 180.0  # a worker imports torch and decord first: seconds on a loaded machine
STOP_GRACE_S = 5.0
MAX_FDS = 64  # memfds per result at most (more buffers than that go over the socket)

_PREFIX = struct.Struct("!QII")  # pickle length, buffer count, transport (0 pipe, 1 memfd)
_LENGTH = struct.Struct("!Q")
_MEMFD, _PIPE = 1, 0


class PoolClosedError(MdsVqaError):
    """The pool was closed before this job finished."""


class WorkerDiedError(MdsVqaError):
    """The worker process running this job died (killed, crashed) before it answered."""


class WorkerStartError(MdsVqaError):
    """A worker process could not be started (it failed before taking any job)."""


class RemoteError(Exception):
    """An exception of a worker that could not be sent as itself; the message names its type."""


class _RemoteTraceback(Exception):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def memfd_available() -> bool:
    return hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


def default_transport() -> Transport:
    return "memfd" if memfd_available() else "pipe"


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


# -- framing on a stream socket ------------------------------------------------------------------

def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    _recv_into(sock, memoryview(buffer))
    return buffer


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    view = view.cast("B")
    done = 0
    while done < len(view):
        got = sock.recv_into(view[done:], min(len(view) - done, 1 << 24))
        if got == 0:
            raise EOFError("the other side closed the connection")
        done += got


def _send_message(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _recv_message(sock: socket.socket) -> bytearray:
    (size,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size))
    return _recv_exact(sock, size)


@dataclass
class _Packed:
    """A result ready to send: its pickle, its out-of-band buffers and, for memfd, their files."""

    header: bytes
    raws: list[memoryview]
    fds: list[int]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _pack(value: Any, transport: Transport) -> _Packed:
    """Pickle ``value`` with its large buffers out of band; for memfd, write each into its own file."""
    buffers: list[pickle.PickleBuffer] = []

    def keep(buffer: pickle.PickleBuffer) -> bool:  # true: in band
        try:
            size = buffer.raw().nbytes
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if size < OUT_OF_BAND_MIN:
            return True
        buffers.append(buffer)
        return False

    header = pickle.dumps(value, protocol=5, buffer_callback=keep)
    packed = _Packed(header, [buffer.raw() for buffer in buffers], [])
    if transport == "memfd" and len(packed.raws) <= MAX_FDS:
        try:
            for raw in packed.raws:
                fd = os.memfd_create("mdsvqa-result", os.MFD_CLOEXEC)
                packed.fds.append(fd)
                os.ftruncate(fd, raw.nbytes)
                done = 0
                while done < raw.nbytes:
                    done += os.pwrite(fd, raw[done:done + (1 << 30)], done)
        except BaseException:
            packed.close()
            raise
    return packed


def _send_packed(sock: socket.socket, packed: _Packed) -> None:
    sizes = b"".join(_LENGTH.pack(raw.nbytes) for raw in packed.raws)
    if packed.fds:
        socket.send_fds(sock, [_PREFIX.pack(len(packed.header), len(packed.raws), _MEMFD)], packed.fds)
        sock.sendall(sizes + packed.header)
        return
    sock.sendall(_PREFIX.pack(len(packed.header), len(packed.raws), _PIPE) + sizes + packed.header)
    for raw in packed.raws:
        sock.sendall(raw)


def _send_result(sock: socket.socket, value: Any, transport: Transport) -> None:
    packed = _pack(value, transport)
    try:
        _send_packed(sock, packed)
    finally:
        packed.close()


def _recv_result(sock: socket.socket) -> Any:
    data, fds, _flags, _addr = socket.recv_fds(sock, _PREFIX.size, MAX_FDS)
    try:
        if not data:
            raise EOFError("the worker closed the connection")
        prefix = bytearray(data)
        if len(prefix) < _PREFIX.size:
            prefix += _recv_exact(sock, _PREFIX.size - len(prefix))
        header_size, count, mode = _PREFIX.unpack(prefix)
        raw_sizes = _recv_exact(sock, _LENGTH.size * count)
        sizes = [_LENGTH.unpack_from(raw_sizes, _LENGTH.size * i)[0] for i in range(count)]
        header = _recv_exact(sock, header_size)
        buffers: list[Any] = []
        if mode == _MEMFD:
            if len(fds) != count:
                raise EOFError(f"expected {count} shared-memory files, got {len(fds)}")
            for fd, size in zip(fds, sizes):
                # MAP_POPULATE: the page tables are made here (GIL released), not on the model's first touch
                flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
                buffers.append(mmap.mmap(fd, size, flags=flags) if size else bytearray())
        else:
            import numpy as np

            for size in sizes:
                target = np.empty(size, dtype=np.uint8)  # not zero-filled, unlike bytearray
                _recv_into(sock, target.data)
                buffers.append(target)
        try:
            return pickle.loads(header, buffers=buffers)
        except Exception as exc:  # noqa: BLE001 - read whole, so the stream stays in step: the job's error
            return ("error", RemoteError(f"the result could not be unpickled here ({type(exc).__name__}: {exc})"),
                    None)
    finally:
        for fd in fds:
            os.close(fd)


# -- the worker side -----------------------------------------------------------------------------

def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent went before the line above took effect
        os._exit(1)


def _sendable(exc: BaseException) -> tuple[BaseException, str]:
    """``exc`` itself when it survives a pickle round trip (else a RemoteError naming it), and its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        sendable = exc
    except Exception:  # noqa: BLE001 - any failure to pickle means: send a plain description
        sendable = RemoteError(f"{type(exc).__name__}: {exc}")
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return sendable, f"\n(in worker process {os.getpid()})\n{text}"


def serve(fd: int, parent: int) -> None:
    """A worker's life: run the initializer, then one job at a time until the socket closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    sock = socket.socket(fileno=fd)
    try:
        start = pickle.loads(_recv_message(sock))
        transport: Transport = start["transport"]
        initializer, initargs = start["initializer"] or (None, ())
        if initializer is not None:
            initializer(*initargs)
        _send_result(sock, ("ready", os.getpid(), None), "pipe")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the job
        try:
            _send_result(sock, ("start-failed", *_sendable(exc)), "pipe")
        finally:
            os._exit(3)
    while True:
        try:
            message = _recv_message(sock)
        except (EOFError, OSError):
            break
        if not message:
            break
        try:
            fn, args = pickle.loads(message)
            outcome: tuple[str, Any, str | None] = ("ok", fn(*args), None)
        except Exception as exc:  # noqa: BLE001 - every failure is the job's, sent back
            outcome = ("error", *_sendable(exc))
        try:
            packed = _pack(outcome, transport)
        except Exception as exc:  # noqa: BLE001 - e.g. a result that cannot be pickled, or no memory for it
            packed = _pack(("error", *_sendable(exc)), "pipe")
        del outcome
        try:
            _send_packed(sock, packed)
        except OSError:
            break
        finally:
            packed.close()
        del packed
    os._exit(0)  # no interpreter teardown: decord's and torch's threads need none


_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); from ml_backend.procpool import serve; "
         "serve(int(sys.argv[2]), int(sys.argv[3]))")


@dataclass
class _Job:
    future: Future
    payload: bytes
    label: str


class _Worker:
    """One child process and the parent's end of its socket."""

    def __init__(self, process: subprocess.Popen, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock

    @property
    def pid(self) -> int:
        return self.process.pid

    def death(self) -> str:
        """How the process ended, in words (waits a moment for the kernel to report it)."""
        try:
            code = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "its connection broke"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = ", e.g. by the kernel's OOM killer when memory ran out" if -code == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return f"exit status {code}"

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        with contextlib.suppress(OSError):  # shutdown first: it wakes a feeder blocked reading this socket
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=min(grace, 0.5))
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()


_POOLS: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


class ProcessPool:
    """``workers`` processes, each fed one job at a time by its own thread of this process.

    ``submit(fn, *args, label=...)`` pickles ``(fn, args)`` at once (module-level functions and
    picklable arguments) and returns a Future of ``fn(*args)`` as computed in a worker, with
    the worker's exception (when it pickles; else :class:`RemoteError`) on failure. ``label``
    names the job in :class:`WorkerDiedError` messages. ``initializer(*initargs)`` runs once in
    every worker before its first job. ``env`` entries are added to the workers' environment.
    """

    def __init__(self, workers: int, *, initializer: Callable[..., None] | None = None, initargs: tuple = (),
                 transport: Transport | None = None, env: dict[str, str] | None = None, idle_s: float = IDLE_S,
                 name: str = "mdsvqa-worker", start: int = 0) -> None:
        if workers < 1:
            raise ValueError(f"a process pool needs at least one worker, got {workers}")
        self.workers = workers
        self.transport: Transport = transport or default_transport()
        if self.transport == "memfd" and not memfd_available():
            raise ValueError("the memfd transport needs Linux (os.memfd_create, socket.send_fds)")
        self.idle_s = idle_s
        self.name = name
        self._start = pickle.dumps({"transport": self.transport,
                                    "initializer": (initializer, initargs) if initializer else None})
        self._env = {**os.environ, **(env or {})}
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._live: dict[int, _Worker] = {}  # feeder index -> its worker, while it has one
        self._feeders: list[threading.Thread] = []
        self._waiting = 0  # feeders waiting for a job
        self.started = 0  # worker processes started over the pool's life (restarts included)
        _POOLS.add(self)
        self.grow(start, eager=True)

    def grow(self, target: int, *, eager: bool = True) -> None:
        """At least ``target`` feeders (never past ``workers``); ``eager``: the new ones' workers start now.

        The pool also grows by itself: a job submitted while no feeder waits adds one. So a run
        of one video starts one worker, not one per core.
        """
        with self._lock:
            if self._closed:
                return
            for _ in range(max(0, min(target, self.workers) - len(self._feeders))):
                index = len(self._feeders)
                feeder = threading.Thread(target=self._feed, args=(index, eager), name=f"{self.name}-feeder-{index}",
                                          daemon=True)
                self._feeders.append(feeder)
                self._waiting += 1  # counted as waiting from the start: it takes a job as soon as it runs
                feeder.start()

    # -- the caller's side ----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any, label: str = "job") -> Future:
        future: Future = Future()
        payload = pickle.dumps((fn, args), protocol=5)
        with self._lock:
            if self._closed:
                raise PoolClosedError("the worker pool is closed")
            self._jobs.put(_Job(future, payload, label))
            short = self._jobs.qsize() > self._waiting
            feeders = len(self._feeders)
        if short:
            self.grow(feeders + 1, eager=False)
        return future

    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        with self._lock:
            return [worker.pid for worker in self._live.values() if worker.process.poll() is None]

    def close(self, *, grace: float = STOP_GRACE_S) -> None:
        """Fail what has not started, stop every worker (SIGTERM after ``grace``/10, SIGKILL after
        ``grace``) and wait for them: no process of the pool outlives this call."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            live = list(self._live.values())
            feeders = list(self._feeders)
        for _ in feeders:
            self._jobs.put(None)
        for worker in live:  # a busy worker: its feeder sees the connection break and fails that job
            worker.stop(grace)
        for feeder in feeders:
            feeder.join()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(PoolClosedError(f"{job.label}: the worker pool was closed"))
        _POOLS.discard(self)

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the feeders ---------------------------------------------------------------------------

    def _hire(self, index: int) -> _Worker:
        """Start feeder ``index``'s worker and wait for its initializer (close() can interrupt the wait)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(__file__).resolve().parents[1])
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, root, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], env=self._env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                close_fds=True)
        except OSError as exc:
            ours.close()
            raise WorkerStartError(f"a {self.name} process could not be started ({exc})") from exc
        finally:
            theirs.close()
        worker = _Worker(process, ours)
        with self._lock:
            closed = self._closed
            if not closed:
                self._live[index] = worker
        if closed:
            worker.stop(0.5)
            raise WorkerStartError("the pool is closing")
        try:
            _send_message(ours, self._start)
            ours.settimeout(START_TIMEOUT_S)
            status, value, remote = _recv_result(ours)
            ours.settimeout(None)
            if status != "ready":
                raise WorkerStartError(f"a {self.name} process failed to start: {value}") from _RemoteTraceback(remote)
        except (OSError, EOFError, struct.error) as exc:
            reason = worker.death() if isinstance(exc, EOFError) else f"{type(exc).__name__}: {exc}"
            self._fire(index, worker)
            raise WorkerStartError(f"a {self.name} process did not start ({reason})") from exc
        except BaseException:
            self._fire(index, worker)
            raise
        self.started += 1
        return worker

    def _feed(self, index: int, eager: bool) -> None:
        worker: _Worker | None = None
        failures = 0
        waiting = True
        try:
            if eager:
                try:
                    worker = self._hire(index)
                except WorkerStartError as exc:
                    if not self._closed:
                        log.warning("%s", exc)
            while True:
                if not waiting:
                    with self._lock:
                        self._waiting += 1
                try:
                    job = self._jobs.get(timeout=self.idle_s if worker is not None else None)
                except queue.Empty:
                    waiting = True
                    self._fire(index, worker)
                    worker = None
                    continue
                with self._lock:
                    self._waiting -= 1
                waiting = False
                if job is None:
                    return
                if not job.future.set_running_or_notify_cancel():
                    continue
                if self._closed:
                    job.future.set_exception(PoolClosedError(f"{job.label}: the worker pool was closed"))
                    continue
                if worker is None:
                    try:
                        worker = self._hire(index)
                        failures = 0
                    except WorkerStartError as exc:
                        failures += 1
                        error = PoolClosedError if self._closed else WorkerStartError
                        job.future.set_exception(error(f"{job.label}: {exc}"))
                        if not self._closed:
                            time.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))  # a broken environment: no busy loop
                        continue
                worker = self._run(index, worker, job)
                del job
        finally:
            self._fire(index, worker)

    def _run(self, index: int, worker: _Worker, job: _Job) -> _Worker | None:
        """One job on ``worker``; the worker to go on with (None: it died, or the connection is unusable)."""
        try:
            _send_message(worker.sock, job.payload)
            status, value, remote = _recv_result(worker.sock)
        except (OSError, EOFError, struct.error):
            if self._closed:
                job.future.set_exception(PoolClosedError(f"{job.label}: the worker pool was closed"))
            else:
                how = worker.death()
                log.warning("%s process %d died while on %s (%s); starting another", self.name, worker.pid,
                            job.label, how)
                job.future.set_exception(WorkerDiedError(
                    f"{job.label}: the worker process preparing it died ({how}); the pool goes on with a new one"))
            self._fire(index, worker)
            return None
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed message: the job fails, never the feeder
            job.future.set_exception(exc)
            self._fire(index, worker)
            return None
        if status == "ok":
            job.future.set_result(value)
        else:
            if remote:
                value.__cause__ = _RemoteTraceback(remote)
            job.future.set_exception(value)
        return worker

    def _fire(self, index: int, worker: _Worker | None) -> None:
        if worker is None:
            return
        with self._lock:
            if self._live.get(index) is worker:
                del self._live[index]
        worker.stop(0.5)


@atexit.register
def _close_all() -> None:
    for pool in list(_POOLS):
        pool.close(grace=1.0)


# -- pools shared by the scorers of one process ---------------------------------------------------

_SHARED_LOCK = threading.Lock()
_SHARED: dict[tuple, tuple[ProcessPool, int]] = {}


def acquire_shared(key: tuple, factory: Callable[[], ProcessPool]) -> ProcessPool:
    """The process's pool under ``key`` (made by ``factory`` on first use); give it back with release_shared."""
    with _SHARED_LOCK:
        pool, users = _SHARED.get(key, (None, 0))
        if pool is None or pool._closed:
            pool, users = factory(), 0
        _SHARED[key] = (pool, users + 1)
        return pool


def release_shared(pool: ProcessPool) -> None:
    """One user less; the last one closes the pool (its workers stop)."""
    with _SHARED_LOCK:
        for key, (shared, users) in list(_SHARED.items()):
            if shared is pool:
                if users > 1:
                    _SHARED[key] = (shared, users - 1)
                    return
                del _SHARED[key]
                break
    pool.close()
