"""Subcommands of ``mdsvqa``. Keep imports at module top light: see ml_backend/cli.py."""
