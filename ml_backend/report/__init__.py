"""A self-contained HTML report of a pool: difficulty, embedding map with picks, objective terms, versions."""
