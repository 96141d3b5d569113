"""The one configuration object of the project, read from the environment.

Every knob has an ``MDSVQA_*`` environment variable (Label Studio's own two use
their customary names). Command-line options override the environment by
constructing ``Settings(**overrides)``; nothing else in the code reads ``os.environ``
for configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_BASE = "hollow404/VQR1-7B-YouTubeUGC"
DEFAULT_ADAPTER = "hollow404/MDS-VQA-Failure-Predictor"


ModelKind = Literal["quality", "difficulty"]  # f scores quality, g predicts difficulty
MODEL_KINDS: tuple[ModelKind, ...] = ("quality", "difficulty")

# Marks a setting that is not secret by itself but part of a credential (the basic auth user,
# Label Studio's URL that goes with its token): handed on only together with its secret.
CREDENTIAL: dict[str, Any] = {"mdsvqa_credential": True}


def credential_fields(model: type[BaseSettings]) -> set[str]:
    """Fields typed SecretStr, or marked CREDENTIAL: never written into job settings or logs."""
    found = set()
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("mdsvqa_credential") or "SecretStr" in repr(field.annotation):
            found.add(name)
    return found


def credential_env_names(model: type[BaseSettings]) -> set[str]:
    """Every environment variable that can set a credential field (prefix + name, and its aliases)."""
    prefix = str(model.model_config.get("env_prefix", ""))
    names = set()
    for name in credential_fields(model):
        names.add((prefix + name).upper())
        alias = model.model_fields[name].validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice).upper() for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias.upper())
    return names


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mdsvqa"


class VideoSettings(BaseSettings):
    """Frame sampling and sizing (SPEC section 3 defaults)."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_VIDEO_", extra="forbid")

    fps: float = Field(2.0, gt=0, description="Frames sampled per second of video.")
    min_frames: int = Field(4, ge=2, description="Fewest frames sampled from a video.")
    max_frames: int = Field(768, ge=2, description="Most frames sampled from a video.")
    min_pixels: int = Field(128 * 28 * 28, gt=0, description="Smallest area of one frame.")
    max_pixels: int = Field(768 * 28 * 28, gt=0, description="Largest area of one frame.")
    total_pixels: int = Field(90_316_800, gt=0, description="Pixel budget of all frames.")
    max_side: int = Field(
        8192, gt=0, description="Refuse videos wider or taller than this (decoder safety)."
    )
    resize: Literal["exact", "decoder"] = Field(
        "exact", description="'exact': decode at source size, then the reference's bicubic antialiased "
        "uint8 resize (torchvision), pixel for pixel as the checkpoints saw; 'decoder': scale real downscales "
        "inside FFmpeg (faster, less memory, pixels differ by ~1/255 on average). Part of every cache key.",
    )
    second_per_grid: Literal["reference", "sampled"] = Field(
        "reference", description="Temporal RoPE spacing (second_per_grid_ts): 'reference' = 1.0 for every "
        "video, as the published checkpoints were trained and evaluated; 'sampled' = 2 / sampled fps, for "
        "checkpoints trained with the true spacing.",
    )

    @model_validator(mode="after")
    def _check(self) -> VideoSettings:
        if self.min_frames > self.max_frames:
            raise ValueError("min_frames must not exceed max_frames")
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


CLIP_MODEL = "RN101"
CLIP_PRETRAINED = "openai"
SIGLIP2_MODEL = "google/siglip2-giant-opt-patch16-384"


class FeatureSettings(BaseSettings):
    """Frame embeddings for the diversity term of selection (SPEC section 5, docs/selection.md)."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_FEATURES_", extra="forbid", protected_namespaces=())

    extractor: Literal["clip", "siglip2", "vision"] = Field(
        "clip", description="'clip': CLIP RN101 (OpenAI weights) on every frame, each row L2-normalised, the "
        "paper's default (lambda 0.25); 'siglip2': SigLIP2 giant on every frame, not normalised (lambda 0.075); "
        "'vision': the base model's own vision tower on the scorer's frames (no lambda was chosen for it: "
        "selection then needs an explicit lambda).",
    )
    clip_model: str = Field(CLIP_MODEL, description="open_clip architecture of the 'clip' extractor.")
    clip_pretrained: str = Field(
        CLIP_PRETRAINED, description="open_clip pretrained tag naming the CLIP weights ('openai'); downloaded "
        "on first use unless clip_checkpoint is set. 'random' = random weights (tests only: meaningless features).",
    )
    clip_checkpoint: Path | None = Field(
        None, description="Local file holding those weights (OpenAI's RN101.pt, or open_clip's "
        "open_clip_pytorch_model.bin / .safetensors): no download.",
    )
    siglip2_model: str = Field(SIGLIP2_MODEL, description="Hugging Face id of the 'siglip2' extractor's model.")
    siglip2_path: Path | None = Field(
        None, description="Local folder holding that model (config, weights, preprocessor config): no download.",
    )
    device: str = Field("auto", description="'auto' (the model's device: MDSVQA_DEVICE), 'cpu', 'cuda', 'cuda:N'.")
    batch_size: int = Field(64, ge=1, description="Frames per forward pass of the 'clip' / 'siglip2' extractor.")


class PrioritySettings(BaseSettings):
    """Ordering the labeling queue by MDS-VQA selection (docs/prioritize.md)."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_PRIORITY_", extra="forbid")

    enabled: bool = Field(
        True, description="The backend orders each project's queue by itself: after scoring and as labels arrive.",
    )
    budget: int | None = Field(
        None, ge=0, description="Greedy picks K at the head of the queue; default: budget_fraction of the pool.",
    )
    budget_fraction: float = Field(
        0.05, gt=0, le=1, description="Default K as a share of the unlabeled scored tasks (rounded up, at least 1).",
    )
    diversity_lambda: float | None = Field(
        None, ge=0, description="lambda: weight of diversity against difficulty in the greedy picks; default "
        "from the feature extractor (the paper's 0.25 for CLIP RN101, 0.075 for SigLIP2; required for 'vision').",
    )
    debounce_s: float = Field(
        10.0, ge=0, description="Quiet period after scoring or label events before the queue is re-ordered "
        "(at most 5x this while events keep coming).",
    )
    task_fields: bool = Field(
        True, description="Write each task's queue rank and difficulty into its data (mdsvqa_rank, "
        "mdsvqa_difficulty) so the Data Manager shows them as columns; a label re-writes the ranks that moved.",
    )


REFERENCE_GEOMETRY = {"quality": (2, 16), "difficulty": (8, 64)}


class TrainingSettings(BaseSettings):
    """Active fine-tuning knobs (SPEC section 6 defaults; CPU-sized limits where noted)."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_TRAIN_", extra="forbid")

    objective: ModelKind = Field(
        "quality", description="'quality' fine-tunes f (GRPO); 'difficulty' trains the failure predictor g (REINFORCE)."
    )
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate of the LoRA weights.")
    epochs: int = Field(10, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    videos_per_step: int | None = Field(
        None, ge=2, description="Videos per optimizer step, by gradient accumulation over micro-batches "
        "(default as the reference: 16 for quality/f, 64 for difficulty/g).",
    )
    videos_compared: int | None = Field(
        None, ge=2, description="Videos of one micro-batch, which the rewards compare with each other "
        "(default as the reference: 2 for quality/f, 8 for difficulty/g).",
    )
    group_size: int = Field(4, ge=2, description="Sampled answers per video for GRPO (G).")
    kl_beta: float = Field(0.04, ge=0, description="Weight of the KL term to the adapter-disabled reference.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    max_new_tokens: int = Field(256, ge=1, description="Longest sampled answer of a rollout.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory in the language model.")
    max_frames: int = Field(14, ge=2, description="Frames drawn per training video and step: random, sorted, "
                            "from the 2-fps frames, redrawn every step (reference: 14).")
    frame_side: int = Field(504, ge=28, multiple_of=28, description="Training frames are squashed to this side "
                            "x side, aspect ratio not kept (reference: 512 asked, 504 after rounding to 28).")
    held_out_fraction: float = Field(0.2, gt=0, lt=1,
                                     description="Share of labels kept out of training for evaluation.")
    split_seed: int = Field(0, description="Seed of the deterministic train/held-out split and of the rollouts.")
    min_train_labels: int = Field(4, ge=2, description="Refuse to train with fewer training labels.")
    min_held_out_labels: int = Field(5, ge=3,
                                     description="Refuse to train with fewer held-out labels (SRCC needs some).")
    eval_samples: int = Field(1, ge=1, description="Sampled answers averaged per held-out video when evaluating.")
    f_max_new_tokens: int = Field(
        2048, ge=1, description="Answer budget of the quality model f when its scores are estimated (g's targets "
        "|f - MOS|, held-out evaluation of f): its thinking prompt at inference settings (reference: 2048).",
    )
    f_unparsed: Literal["drop", "constrained"] = Field(
        "drop", description="An f answer without a score: 'drop' leaves that video out of g's targets and "
        "reports it (the reference's estimator only); 'constrained' takes f's constrained answer instead, a "
        "second estimator, for random test models whose sampled text never parses.",
    )

    # Training started from Label Studio ("Start Training", auto-train); see docs/training.md
    objectives: Annotated[list[ModelKind], NoDecode] = Field(
        default_factory=lambda: list(MODEL_KINDS),
        description="What a backend training run trains, in order (comma-separated): 'quality' (f) then "
        "'difficulty' (g, whose target |f - MOS| uses the then active f).",
    )
    promote: Literal["if-not-worse", "if-better", "always", "never"] = Field(
        "if-not-worse", description="When a backend training run activates a new version: held-out SRCC not "
        "worse than the version it started from, strictly better, always, or never.",
    )
    source_labels: Path | None = Field(
        None, description="Optional source-domain JSONL ({\"video\", \"mos\"}) trained alongside the Label Studio "
        "labels, each step from one set.",
    )
    auto_after_labels: int = Field(
        0, ge=0, description="Start a training run by itself after this many new annotation events of a "
        "project (0 = off).",
    )

    def geometry(self, objective: str) -> tuple[int, int]:
        """(videos compared per micro-batch, videos per optimizer step) for an objective.

        The reference's: f compares the 2 videos of each GPU's micro-batch (4 GPUs x 2
        accumulation steps: 16 videos a step); g compares the 8 videos of each GPU (8 GPUs: 64).
        """
        compared, per_step = REFERENCE_GEOMETRY[objective]
        compared = self.videos_compared or compared
        per_step = max(self.videos_per_step or per_step, compared)
        return compared, per_step

    @field_validator("objectives", mode="before")
    @classmethod
    def _split_objectives(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("name at least one objective (quality, difficulty)")
        if len(set(value)) != len(value):
            raise ValueError("each objective at most once")
        return value


class VllmSettings(BaseSettings):
    """The vLLM engine (``MDSVQA_ENGINE=vllm``, the ``vllm`` extra; README, Scoring with vLLM)."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_VLLM_", extra="forbid")

    constraint: Literal["trie", "regex"] = Field(
        "trie", description="How decoding='constrained' is enforced: 'trie' = the HF engine's answer trie as a vLLM "
        "logits processor (same token paths, same answers); 'regex' = vLLM's structured outputs with a regex of "
        "the same answers (any spelling of them in tokens: an untrained model may answer differently).",
    )
    gpu_memory_utilization: float = Field(
        0.45, gt=0, le=1, description="Share of the GPU's memory one engine takes (CUDA). Below one half, so that "
        "the engine of a newly activated version starts beside the one still serving.",
    )
    kv_cache_gib: float | None = Field(
        None, gt=0, description="KV cache size of one engine in GiB; unset = vLLM's own choice (CUDA: from "
        "gpu_memory_utilization; CPU: VLLM_CPU_KVCACHE_SPACE or vLLM's default).",
    )
    max_model_len: int | None = Field(
        None, ge=256, description="Longest prompt + answer in tokens; unset = the model's own limit. Videos with "
        "more visual tokens are refused before decoding.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine spans (tensor parallel).")
    enforce_eager: bool = Field(
        False, description="No CUDA graphs or torch.compile: starts faster, generates slower.",
    )


class Settings(BaseSettings):
    """Everything a run of ``mdsvqa`` can be told from the environment."""

    model_config = SettingsConfigDict(env_prefix="MDSVQA_", extra="forbid", populate_by_name=True)

    # Models
    base: str = Field(DEFAULT_BASE, description="Base model f: hub id or local directory.")
    adapter: str = Field(DEFAULT_ADAPTER, description="Failure-predictor adapter g: hub id or local directory.")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' = bfloat16 on CUDA, float32 on CPU."
    )
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="'auto' = FlashAttention-2 when installed on CUDA, else SDPA."
    )
    offline: bool = Field(False, description="Never contact the model hub; use local files and the HF cache only.")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="Inference engine: 'hf' = transformers + PEFT (adapters on the shared base); 'vllm' = vLLM "
        "(the vllm extra) on a merged checkpoint per adapter version, cached under MDSVQA_CACHE_DIR/merged.",
    )

    # Decoding
    decoding: Literal["constrained", "greedy", "sample"] = Field(
        "constrained",
        description="'constrained' forces <answer>d.dd</answer> (deterministic); 'greedy' is free-form; "
        "'sample' averages num_samples sampled answers.",
    )
    num_samples: int = Field(1, ge=1, description="Answers averaged per video with decoding='sample'.")
    max_new_tokens: int = Field(32, ge=1, description="Token limit for free-form decoding.")
    temperature: float | None = Field(None, gt=0, description="Sampling temperature; default from the checkpoint.")
    seed: int = Field(0, description="Seed for sampled decoding.")

    # Throughput
    batch_size: int = Field(2, ge=1, description="Videos per forward pass.")
    decode_workers: int | None = Field(
        None, ge=0, le=256, description="Worker processes that decode and patch videos (and compute CPU frame "
        "features) ahead of the model, shared by the scorers of a process. Unset = one per core this process may "
        "use (CPU affinity, cgroup quota), at most one per 3 GiB of half the free RAM; 0 = in the scorer's "
        "process, two decode threads; 1 = one decode thread (docs/performance.md).",
    )
    decode_ahead: int | None = Field(
        None, ge=1, description="Videos prepared ahead of the model at most, with worker processes (in the "
        "workers or waiting for their batch; each holds its float32 patches: 257 MB for a 20 s 1080p clip). "
        "Unset = workers + batch_size.",
    )
    max_visual_tokens: int = Field(
        0, ge=0, description="Refuse (final error, nothing decoded) a video whose sampled frames make more visual "
        "tokens than this; 0 = derived from the memory of the device when the model is loaded (docs/memory.md). "
        "Raising it past what the memory holds gets the worker killed by the kernel.",
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Score cache and downloads.")
    use_cache: bool = Field(True, description="Read and write the persistent score cache.")
    ray_address: str | None = Field(
        None, description="Run `mdsvqa score` / `score-project` on a Ray cluster (ray[data]): 'local' (or 'local:N' "
        "with N CPUs) starts one here, 'auto' or host:port joins a running one, ray://host:10001 via Ray Client; "
        "unset = one process (README, Scoring on Ray).",
    )

    # Label Studio and the backend
    label_studio_url: str | None = Field(
        None,
        validation_alias=AliasChoices("LABEL_STUDIO_URL", "MDSVQA_LABEL_STUDIO_URL", "label_studio_url"),
        description="Label Studio base URL (also taken from /setup).", json_schema_extra=CREDENTIAL,
    )
    label_studio_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("LABEL_STUDIO_API_KEY", "MDSVQA_LABEL_STUDIO_API_KEY", "label_studio_api_key"),
        description="Label Studio token (also taken from /setup). Never logged.",
    )
    model_dir: Path = Field(Path("./mdsvqa-models"), description="Versions, jobs and backend state.")

    # ML backend server (mdsvqa serve); see docs/backend.md
    host: str = Field("127.0.0.1", description="Interface the backend listens on (0.0.0.0 in containers).")
    port: int = Field(9090, ge=1, le=65535, description="Port the backend listens on.")
    threads: int = Field(8, ge=1, le=256, description="Request threads of the single server process (waitress).")
    public_url: str | None = Field(
        None, description="URL under which Label Studio reaches this backend; finds our ML backend entry in "
        "Label Studio (default: whichever of the project's backends answers /health with our instance id).",
    )
    predict_deadline_s: float = Field(
        60.0, gt=0, lt=100, description="/predict answers within this; later results are pushed to Label Studio.",
    )
    download_workers: int = Field(2, ge=1, le=32, description="Parallel media downloads feeding the scorer.")
    media_max_bytes: int = Field(4 * 1024**3, gt=0, description="Refuse media files larger than this.")
    media_timeout_s: float = Field(300.0, gt=0, description="Time limit for downloading one media file.")
    local_files_root: Path | None = Field(
        None,
        validation_alias=AliasChoices("MDSVQA_LOCAL_FILES_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT",
                                      "local_files_root"),
        description="Read Label Studio local-files media from this directory instead of downloading it.",
    )
    score_project_on_setup: bool = Field(
        False, description="After /setup, score every task of the project in the background and push predictions.",
    )
    model_version_recheck_s: float = Field(
        300.0, ge=0, description="How often /setup re-checks that the project's model_version equals ours.",
    )
    basic_auth_user: str | None = Field(None, description="HTTP basic auth user required on the backend's routes.",
                                        json_schema_extra=CREDENTIAL)
    basic_auth_password: SecretStr | None = Field(None, description="HTTP basic auth password. Never logged.")
    version_poll_s: float = Field(
        2.0, gt=0, description="How often the backend checks MODEL_DIR for a newly activated difficulty version "
        "(also checked on every /health, /setup and /predict).",
    )
    webhook_secret: SecretStr | None = Field(
        None, description="Secret Label Studio's webhook must send in X-Mdsvqa-Webhook-Secret (default: a random "
        "one kept in MDSVQA_CACHE_DIR/webhook_secret). Never logged.",
    )

    video: VideoSettings = Field(default_factory=VideoSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    priority: PrioritySettings = Field(default_factory=PrioritySettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    vllm: VllmSettings = Field(default_factory=VllmSettings)

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / "scores.sqlite"

    @property
    def backend_state_path(self) -> Path:
        """Backend's own state: scores by media URL, projects set up, training requests."""
        return self.cache_dir / "backend.sqlite"

    @property
    def webhook_secret_path(self) -> Path:
        """Where the backend keeps its random webhook secret when MDSVQA_WEBHOOK_SECRET is unset."""
        return self.cache_dir / "webhook_secret"

    @property
    def outbox_path(self) -> Path:
        """The backend's pending work for Label Studio (server/outbox.py), beside its state."""
        return self.cache_dir / "outbox.sqlite"

    @property
    def download_dir(self) -> Path:
        return self.cache_dir / "downloads"

    @model_validator(mode="after")
    def _check_engine(self) -> Settings:
        if self.engine == "vllm" and self.ray_address:
            raise ValueError("the vLLM engine does not run on Ray yet: use --engine hf with --ray, or vLLM alone")
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if bool(self.basic_auth_user) != bool(self.basic_auth_password and self.basic_auth_password.get_secret_value()):
            raise ValueError("set both MDSVQA_BASIC_AUTH_USER and MDSVQA_BASIC_AUTH_PASSWORD, or neither")
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment with explicit (e.g. command-line) overrides on top.

    ``None`` overrides are dropped so unset CLI options fall back to the environment.
    """
    clean: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)
