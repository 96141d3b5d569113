"""Per-video frame embeddings for diversity: the base model's own vision tower, or CLIP."""
