"""Orchestration tasks: Prefect tasks, MLflow tracking and Great Expectations gates around the `bye` library."""
