"""``mdsvqa export --merged DIR``: the base with one adapter folded in, a checkpoint vLLM can serve."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="Write base + adapter merged into one checkpoint (for vLLM, which refuses LoRA on lm_head).",
        description="Fold a LoRA adapter into the base weights with PEFT (merge_and_unload) and write a plain "
        "Qwen2.5-VL checkpoint with the base's processor files to DIR: servable by vLLM (`vllm serve DIR`, "
        "`python -m vllm.entrypoints.openai.api_server --model DIR`) or loadable without PEFT. The adapter is "
        "--adapter (MDSVQA_ADAPTER) or a stored difficulty version (--version ID, or 'active'). "
        "`mdsvqa score/serve --engine vllm` build the same checkpoint themselves, cached under "
        "MDSVQA_CACHE_DIR/merged.",
    )
    parser.add_argument("--merged", required=True, metavar="DIR", help="Folder to write (must not exist, or be empty).")
    parser.add_argument("--base", help="Base model: hub id or folder (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Adapter: hub id or folder (MDSVQA_ADAPTER).")
    parser.add_argument("--version", metavar="ID", help="A difficulty version of MODEL_DIR instead of --adapter "
                        "('active': the active one).")
    parser.add_argument("--model-dir", help="Versions (MDSVQA_MODEL_DIR).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="Weights' dtype (default: the engine's on this machine: bfloat16 on CUDA, float32 on "
                        "the CPU; MDSVQA_DTYPE).")
    parser.add_argument("--offline", action="store_true", default=None, help="Never contact the model hub.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..engines.merged import export_merged
    from ..errors import ConfigurationError
    from ..model.loading import choose_runtime
    from ..model.sources import resolve_source
    from ..settings import load_settings
    from ..training.versions import VersionStore

    settings = load_settings(base=args.base, adapter=args.adapter, model_dir=args.model_dir, dtype=args.dtype,
                             offline=args.offline)
    out = Path(args.merged)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigurationError(f"{out} exists and is not an empty folder")
    location, label = settings.adapter, None
    if args.version:
        store = VersionStore(settings.model_dir)
        version = store.active("difficulty") if args.version == "active" else store.get(args.version)
        if version is None:
            raise ConfigurationError(f"no active difficulty version in {settings.model_dir}")
        if version.kind != "difficulty":
            raise ConfigurationError(f"{version.id} is a {version.kind} version, not a difficulty one")
        location, label = str(version.adapter_path), version.id
    base = resolve_source(settings.base, kind="base model", offline=settings.offline, required_file="config.json")
    adapter = resolve_source(location, kind="adapter", offline=settings.offline, required_file="adapter_config.json")
    dtype = choose_runtime(settings).dtype
    export_merged(base, adapter, out, dtype=dtype)
    print(f"merged {label or adapter.spec} into {base.spec} ({dtype}) -> {out}")
    return 0
