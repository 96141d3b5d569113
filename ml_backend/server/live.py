"""Serving the active difficulty version of MODEL_DIR, and following it without a restart.

A training job (or ``mdsvqa activate``) only rewrites ``MODEL_DIR/active/difficulty.json``;
the serving process notices with one ``stat``
(:class:`ml_backend.training.versions.ActiveWatcher`) every ``MDSVQA_VERSION_POLL_S``
seconds, and at once when /health, /setup or /predict nudge it. The checks run as the
backend outbox's ``follow`` action on a lane of their own (a slow ordering pass never delays
a switch); each check asks for the next. The new version is loaded as a named adapter on the
shared base (the 7B base stays in memory once), off the request path; then the scorer handle
is swapped in one assignment. Requests that started earlier keep the scorer they took, and
queued work finishes with the version it was submitted for (``ScoringQueue.scorer_for``):
the previous trained adapter stays loaded for that (``KEEP_TRAINED``), older ones are freed.

A version that cannot be loaded is reported (``error``, in /health) and the old one keeps
serving; the next activation is tried afresh.

On the vLLM engine (``MDSVQA_ENGINE=vllm``) a version is a merged checkpoint with an engine of its
own (``DifficultyScorer.for_adapter`` of the stock scorer decides; ``owns_model``): it starts before
the swap, and eviction shuts it down instead of unloading an adapter. Before a switch, every
scorer but the serving and the next one is suspended (``suspend``: a no-op for adapters, a stopped
engine for vLLM, which restarts on use), so at most two engines hold GPU memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..settings import ModelKind, Settings
from ..training.versions import ActiveWatcher, VersionStore
from .outbox import ActionKind, RetryLater
from .outbox_state import ActionPolicy

log = logging.getLogger(__name__)

KEEP_TRAINED = 2  # trained adapters kept in memory: the one serving and the one before it
KIND: ModelKind = "difficulty"
NUDGE_EVERY_S = 0.5  # requests nudge at most this often (each nudge is one outbox write)


class VersionFollower:
    """Builds the scorer of the active difficulty version and switches to newly activated ones."""

    def __init__(self, settings: Settings, *, load_stock: Callable[[], Any] | None = None,
                 prepare: Callable[[Any], Any] = lambda scorer: scorer) -> None:
        self.settings = settings
        self.store = VersionStore(settings.model_dir)
        self._load_stock = load_stock
        # Applied to every scorer built here (the service uses it to record vision features).
        self._prepare = prepare
        self._watcher: ActiveWatcher | None = None
        self._stock: Any = None  # the scorer of the configured adapter (MDSVQA_ADAPTER): the "no version" case
        self._trained: OrderedDict[str, Any] = OrderedDict()  # version id -> scorer, oldest first
        self._registry = threading.Lock()  # guards _trained (read by queue threads); never held while loading
        self._switch_lock = threading.Lock()
        self._stopped = False
        self._last_nudge = float("-inf")
        self._ask: Callable[[float], None] | None = None
        self._handle: Any = None
        self._on_switch: Callable[[str, str], None] | None = None
        self.active_id: str | None = None  # the version now served (None: the configured adapter)
        self.error: str | None = None  # why the last activated version is not served

    # Start -------------------------------------------------------------------------------------
    def initial_scorer(self):
        """The scorer to serve at start (runs on the model-load thread): the active version, if any."""
        from .service import _load_real_scorer

        self._stock = self._prepare((self._load_stock or (lambda: _load_real_scorer(self.settings)))())
        self._watcher = self.store.watcher(KIND)
        target = self._watcher.current
        if target is None:
            return self._stock
        try:
            scorer = self._scorer_of(target)
        except Exception as exc:  # noqa: BLE001 - serve the configured adapter and say why
            self.error = f"active {KIND} version {target} could not be loaded: {type(exc).__name__}: {exc}"
            log.error("%s; serving %s instead", self.error, self._stock.model_version)
            return self._stock
        self.active_id = target
        log.info("serving the active %s version %s (%s)", KIND, target, scorer.model_version)
        return scorer

    def action(self) -> ActionKind:
        """The outbox's ``follow`` action: one check, then the next one asked for ``version_poll_s`` later."""
        poll = self.settings.version_poll_s
        return ActionKind(ActionPolicy("follow", lane="model", retry_delays_s=(poll,), retry_forever=True,
                                       earliest_wins=True),
                          self._follow)

    def start(self, handle: Any, on_switch: Callable[[str, str], None], ask: Callable[[float], None]) -> None:
        """Follow activations once ``handle`` (the ScorerHandle) is ready; ``ask(delay)`` schedules a check."""
        self._handle = handle
        self._on_switch = on_switch
        self._ask = ask
        ask(0.0)

    def stop(self) -> None:
        self._stopped = True

    def nudge(self) -> None:
        """Check for a new version soon (called by requests: at most one outbox write per NUDGE_EVERY_S)."""
        now = time.monotonic()
        if self._ask is None or self._stopped or now - self._last_nudge < NUDGE_EVERY_S:
            return
        self._last_nudge = now
        self._ask(0.0)

    # Following ---------------------------------------------------------------------------------
    def _follow(self, _key: str, _payload: dict[str, Any]) -> None:
        if self._stopped or self._handle is None:
            return
        if self._handle.state == "loading":
            raise RetryLater("the model is still loading")  # polled at the policy's delay
        if self._handle.state != "ready" or self._watcher is None:
            return  # nothing loaded: nothing to follow
        try:
            self.check()
        except Exception:
            log.exception("checking for a new %s version failed", KIND)
        if self._ask is not None and not self._stopped:
            self._ask(self.settings.version_poll_s)

    def check(self) -> bool:
        """Switch to the active version if it changed since the last check; True when switched."""
        if self._watcher is None or not self._watcher.poll():
            return False
        target = self._watcher.current
        with self._switch_lock:
            if target == self.active_id:
                self.error = None
                return False
            # models of their own (vllm engines) not serving now nor next are stopped before one starts
            self._suspend_idle(keep={self.active_id, target})
            try:
                scorer = self._scorer_of(target)
                scorer.resume()  # ready before the swap (a suspended engine restarts here, not in a request)
            except Exception as exc:  # noqa: BLE001 - keep serving the old version, say why
                self.error = f"{KIND} version {target} could not be loaded: {type(exc).__name__}: {exc}"
                log.error("%s; still serving %s", self.error, self.active_id or "the configured adapter")
                return False
            # Free what neither the new nor the current version needs *before* the switch, so that
            # once the new version answers, memory holds exactly what it will hold from then on.
            self._evict(keep={target, self.active_id})
            old = self._handle.replace(scorer)
            previous, self.active_id, self.error = self.active_id, target, None
        log.info("now serving %s version %s (model_version %s, was %s)", KIND, target or "none (configured adapter)",
                 scorer.model_version, old.model_version if old is not None else None)
        if self._on_switch is not None and old is not None and old.model_version != scorer.model_version:
            try:
                self._on_switch(old.model_version, scorer.model_version)
            except Exception:
                log.exception("after switching from %s to %s", previous, target)
        return True

    def _scorer_of(self, version_id: str | None):
        """The scorer of a version: reused if still loaded, else its adapter is loaded onto the shared base."""
        if version_id is None:
            return self._stock
        with self._registry:
            if version_id in self._trained:
                self._trained.move_to_end(version_id)
                return self._trained[version_id]
        version = self.store.get(version_id)
        if version.kind != KIND:
            raise ValueError(f"{version_id} is a {version.kind} version")
        # hf: a named adapter on the shared base; vllm: a merged checkpoint and an engine of its own
        scorer = self._prepare(self._stock.for_adapter(version.id, str(version.adapter_path), label=version.id))
        with self._registry:
            self._trained[version.id] = scorer
        return scorer

    def _suspend_idle(self, keep: set[str | None]) -> None:
        """Suspend the scorers of versions not in ``keep`` (None: the stock one): a no-op for adapters on the
        shared base; a vLLM engine stops, and starts again if work for its version still comes."""
        with self._registry:
            idle = [scorer for version_id, scorer in self._trained.items() if version_id not in keep]
        if None not in keep and self._stock is not None:
            idle.append(self._stock)
        for scorer in idle:
            scorer.suspend()

    def _evict(self, keep: set[str | None]) -> None:
        """Free the oldest trained adapters beyond KEEP_TRAINED, never one in ``keep``.

        A batch still running on an evicted adapter finishes first: unloading takes the model's
        lock, which scoring holds. Work queued for it afterwards is answered "no longer served".
        """
        while True:
            with self._registry:
                if len(self._trained) <= KEEP_TRAINED:
                    return
                candidates = [version_id for version_id in self._trained if version_id not in keep]
                if not candidates:
                    return
                version_id = candidates[0]
                scorer = self._trained.pop(version_id)
            scorer.close(cache=False)  # an engine of its own (vllm) stops here
            if not scorer.owns_model:
                self._stock.loaded.unload_adapter(version_id)
            log.info("unloaded %s version %s", KIND, version_id)

    # Queries -----------------------------------------------------------------------------------
    @property
    def stock_version(self) -> str | None:
        """The model_version of the configured adapter (served when no difficulty version is active)."""
        return self._stock.model_version if self._stock is not None else None

    def scorer_for(self, model_version: str):
        """A still-loaded scorer of ``model_version`` (for work queued before a switch), else None."""
        with self._registry:
            candidates = [self._stock, *self._trained.values()]
        for scorer in candidates:
            if scorer is not None and scorer.model_version == model_version:
                return scorer
        return None

    def model_version_of(self, version_id: str) -> str | None:
        """The model_version a stored difficulty version has (or would have) when served here."""
        with self._registry:
            scorer = self._trained.get(version_id)
        if scorer is not None:
            return scorer.model_version
        if self._stock is None:
            return None
        from ..model.loading import ModelSpec
        from ..model.sources import resolve_source

        try:
            version = self.store.get(version_id)
            source = resolve_source(str(version.adapter_path), kind="adapter", offline=True,
                                    required_file="adapter_config.json")
        except Exception:  # noqa: BLE001 - a listing must not fail on one odd version
            return None
        from dataclasses import replace

        spec = self._stock.spec
        probe = ModelSpec(spec.base, {**spec.adapters, version_id: replace(source, spec=version_id)}, spec.runtime)
        return probe.version(version_id)
