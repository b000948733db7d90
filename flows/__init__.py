"""Prefect flows: one per DVC stage, and the end-to-end flow a deployment runs on each submission."""
