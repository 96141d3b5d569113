"""The labeling queue in Label Studio, ordered by MDS-VQA selection (see docs/prioritize.md).

``order``: the pure mapping from greedy picks and difficulties to prediction scores;
``features``: the selection features the backend keeps per task media; ``labelstudio``: the
few API calls (tasks, prediction scores, the Data Manager view); ``run``: one ordering
pass over a project; ``backend``: the backend's debounced background re-ordering.
"""
