"""Active fine-tuning: reward and loss math, evaluation, label data, the version store and training jobs.

Modules here import only numpy/scipy at the top; torch and transformers are imported
inside the functions that need them (``loop``), so the web process can use the version
store and the job API without loading a model stack.
"""
