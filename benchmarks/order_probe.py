"""Would the clean fine-tune be less chaotic if each epoch's order were keyed by sample id?

The fine-tune draws each epoch's order with ``randperm(n)``, so dropping one sample reshuffles
every epoch and, in this world, moves test accuracy by up to 3.4 points (``noise.py``). This probe
patches the order (only here, not in the product) to sort the samples by a hash of (seed, epoch,
id): dropping one sample then keeps every other sample's relative order, and only the batches
after its position shift by one. It fine-tunes the oracle's set of a poisoned submission and the
same sets as ``noise.py`` (one more random clean sample dropped, same seed), and prints accuracy
and ASR for both orders' oracle and the keyed drops.

    python benchmarks/order_probe.py --trigger badnets --rate 0.1 --drops 4
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from noise import drop_arguments, fine_tune_and_score, oracle_and_drops

import bye.models.training as training
from bye.config import load_params

KEYS: list[str] = []  # the ids of the set being trained, in manifest order


def keyed_order(n: int, seed: int, epoch: int) -> list[int]:
    if len(KEYS) != n:
        raise RuntimeError(f"{len(KEYS)} keys for {n} samples")
    digest = [hashlib.sha256(f"{seed}/{epoch}/{key}".encode()).hexdigest() for key in KEYS]
    return sorted(range(n), key=digest.__getitem__)


def main() -> None:
    args = drop_arguments(__doc__.splitlines()[0])
    params = load_params(args.params)
    clean, dropped = oracle_and_drops(args.trigger, args.rate, args.drops, args.seed)
    training._epoch_order = keyed_order
    with tempfile.TemporaryDirectory() as tmp:
        for n, drop in enumerate(dropped):
            kept = [s for i, s in enumerate(clean) if i != drop]
            KEYS[:] = [s.id for s in kept]
            print({"order": "keyed", "dropped": None if drop is None else clean[drop].id,
                   **fine_tune_and_score(kept, Path(tmp) / f"run-{n}", args, params)}, flush=True)


if __name__ == "__main__":
    main()
