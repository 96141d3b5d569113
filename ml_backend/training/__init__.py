"""Active fine-tuning: reward and loss math, evaluation, label data, the version store and training jobs.

Only ``loop`` and ``policy`` import torch/transformers at the top, and only the
training process imports them (``pipeline`` does so inside ``run_training``), so the
web process can use the version store and the job API without loading a model stack.
"""
