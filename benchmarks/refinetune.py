"""The LoRA fine-tune again on kept recipe bases, under other fine-tune settings: no base is rebuilt.

``base_recipe.py --keep DIR`` keeps ``DIR/world`` and ``DIR/base``. This fine-tunes each kept base on
its world's train split with ``--set`` overrides of ``params.yaml`` (e.g. ``finetune.epochs=6``),
evaluates on the test split and reports as ``base_recipe.py`` does (all / short answers / multiple
choice / by question kind), with the fine-tune's seconds.

    python benchmarks/refinetune.py .cache/recipes/lookups9_budget .cache/recipes/lookups9_budget_seed1 \\
        --set finetune.epochs=6 --name lookups9_budget_ep6

Writes ``benchmarks/results/refinetune_NAME.json`` and ``.md`` (with the machine).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from base_recipe import cells, evaluate
from common import machine, machine_line, with_overrides, write_results

from bye.config import load_params
from bye.models.finetune import finetune
from bye.settings import eval_settings, lora_settings

RESULTS = Path(__file__).parent / "results"


def markdown(record: dict) -> str:
    lines = [f"# The LoRA fine-tune again on kept bases: `{record['name']}`", "",
             f"Machine: {record['machine_line']}", "",
             "Overrides of `params.yaml`: " + (", ".join(f"`{a}`" for a in record["overrides"]) or "none"), "",
             "| kept recipe | fine-tune | all | short answers | multiple choice | option named (MC) | by question kind |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| `{name}` | {run['seconds']:.0f} s | {cells(run['result'])} | "
              + ", ".join(f"{k} {v:.1%}" for k, v in run["result"]["by_kind"].items()) + " |"
              for name, run in record["runs"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", nargs="+", type=Path, help="folders base_recipe.py --keep wrote (world/, base/)")
    parser.add_argument("--name", required=True, help="results go to refinetune_NAME.json / .md")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = with_overrides(load_params(args.params), args.overrides)
    record = {"name": args.name, "overrides": args.overrides, "machine": machine(), "machine_line": machine_line(),
              "runs": {}}
    for kept in args.kept:
        world, base = kept / "world", kept / "base"
        with tempfile.TemporaryDirectory() as scratch:
            began = time.perf_counter()
            tuned = finetune(world / "train.json", world / "images", base, Path(scratch) / "adapter",
                             lora_settings(params), progress=False)
            seconds = time.perf_counter() - began
            result = evaluate(world, base, Path(scratch) / "adapter", eval_settings(params))
        record["runs"][kept.name] = {"seconds": round(seconds, 1), "epoch_losses": tuned["epoch_losses"],
                                     "result": result}
        print(kept.name, f"{seconds:.0f} s", cells(result), flush=True)
    write_results(RESULTS / f"refinetune_{args.name}.json", record, markdown(record))


if __name__ == "__main__":
    main()
