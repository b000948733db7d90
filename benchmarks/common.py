"""What the benchmark scripts share: the command-line options that point at the demo's world."""

from __future__ import annotations

import argparse
from pathlib import Path


def world_arguments(parser: argparse.ArgumentParser, *, rate: float | None = 0.1) -> argparse.ArgumentParser:
    """``--world`` and ``--base`` (the demo's, from ``dvc repro world base``), ``--params`` and,
    unless ``rate`` is None, the poison ``--rate``."""
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    if rate is not None:
        parser.add_argument("--rate", type=float, default=rate)
    return parser


def cell_arguments(description: str) -> argparse.Namespace:
    """The options of a one-cell stage: the world's, ``--trigger`` and ``--rate``."""
    parser = world_arguments(argparse.ArgumentParser(description=description), rate=None)
    parser.add_argument("--trigger", required=True)
    parser.add_argument("--rate", type=float, required=True)
    return parser.parse_args()
