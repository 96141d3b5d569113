"""MDS-VQA for Label Studio: difficulty scoring, selection and active fine-tuning."""

__version__ = "0.1.0"
