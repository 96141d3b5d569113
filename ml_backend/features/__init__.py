"""Per-video frame embeddings for diversity: CLIP RN101 or SigLIP2 on every frame, or the base model's own
vision tower (docs/selection.md)."""
