"""Benchmark bye.detect.extract against a plain forward and the published output_attentions path.

    PYTHONPATH=src .venv/bin/python benchmarks/extract.py [--quick]
    PYTHONPATH=src python benchmarks/extract.py --device cuda --shape llava-1.5-7b --dtype bfloat16

One random-initialised LLaVA-architecture model (CLIP vision tower, Llama language model), nothing
downloaded: ``--shape small`` (text hidden 256, 6 layers, 8 heads; the CPU default) or
``--shape llava-1.5-7b`` (LLaVA-1.5-7B's layer sizes: CLIP ViT-L/14 24 x 1024, Llama 32 x 4096,
32 heads; the vocabulary is the project's 640-token one, which only shrinks the embedding). Three ways through the same batch,
each starting from PIL images and questions (processor encoding included in all three):

  (a) extraction: ``image_attention`` (SDPA forward + one softmax row per layer);
  (b) plain:      the same encoding and an SDPA forward, no attentions;
  (c) batched published: eager attention with ``output_attentions=True`` (every H x T x T map),
                  then row -1 of each layer, the batch in one prefill forward (the published
                  computation batched; not a lower bound on (d): a batch's maps cost more memory
                  traffic than one sample's, and (d) was measured faster);
  (d) published:  what the public code runs: one sample at a time,
                  ``generate(max_new_tokens=1, output_attentions=True)`` under eager attention,
                  row -1 of each layer of the prefill's maps.

Throughput: rounds interleave (a), (b), (c) so that load from other processes hits all three;
the median over rounds is reported (on a GPU the clock is read after ``torch.cuda.synchronize``).
Memory on the CPU: one fresh subprocess per (method, image-token count); extra memory = peak RSS
(``VmHWM``) after the call minus the RSS just before it. On a GPU: peak allocated device memory
during the call minus the allocated memory before it, in the same process.
Writes benchmarks/results/extract.json and extract.md (CPU, small), else
extract_<device>_<shape>.json / .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

import common

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHAPES = {
    "small": dict(patch_size=8, vision_hidden=128, vision_layers=2, vision_heads=4, vision_intermediate=512,
                  text_hidden=256, text_layers=6, text_heads=8, text_intermediate=1024),
    "llava-1.5-7b": dict(patch_size=14, vision_hidden=1024, vision_layers=24, vision_heads=16,
                         vision_intermediate=4096, text_hidden=4096, text_layers=32, text_heads=32,
                         text_intermediate=11008),
}
# Set once by main(): which model shape, on which device, in which dtype.
SETUP = {"shape": "small", "device": torch.device("cpu"), "dtype": torch.float32, "batch_size": 4}
QUESTIONS = ["What colour is the circle?", "How many shapes are there?", "Is there a red square in the picture?",
             "What shape is at the top left?"]


def image_side(image_tokens: int) -> int:
    """Image side in pixels for ``image_tokens`` = (side / patch)^2 image tokens per sample."""
    side = int(round(image_tokens ** 0.5))
    assert side * side == image_tokens
    return side * SHAPES[SETUP["shape"]]["patch_size"]


def build(image_tokens: int, seed: int = 0):
    """(model, processor) of the chosen shape, on the chosen device and dtype."""
    from bye.models.tiny import TinyLlavaSpec, build_model, build_processor, tokenizer_corpus, train_tokenizer

    spec = TinyLlavaSpec(image_size=image_side(image_tokens), vocab_size=640, max_positions=image_tokens + 256,
                         **SHAPES[SETUP["shape"]])
    tokenizer = train_tokenizer(tokenizer_corpus(0, n=200), spec.vocab_size)
    with SETUP["device"]:  # initialise where it runs: a 7B model is built in seconds on a GPU
        model = build_model(tokenizer, spec, seed=seed)
    return model.to(dtype=SETUP["dtype"]).eval(), build_processor(tokenizer, spec)


def synchronize() -> None:
    if SETUP["device"].type == "cuda":
        torch.cuda.synchronize()


def on_model(model, encoded: dict) -> dict:
    """Processor outputs on the model's device and dtype (as the extraction prepares them)."""
    from bye.detect.extract import _forward_parameters, prepare_inputs

    return prepare_inputs(model, encoded, _forward_parameters(model))


def batch(n: int, size: int):
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (size, size, 3)).astype(np.uint8)) for _ in range(n)]
    return images, [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


@torch.no_grad()
def run_extraction(model, processor, images, questions):
    from bye.detect.extract import image_attention

    return image_attention(model, processor, images, questions, batch_size=SETUP["batch_size"]).attention


def chunks(images, questions):
    """The samples in batches of the run's batch size, in order (what (b) and (c) loop over)."""
    size = SETUP["batch_size"]
    return [(images[i:i + size], questions[i:i + size]) for i in range(0, len(images), size)]


@torch.no_grad()
def run_plain(model, processor, images, questions):
    from bye.models.chat import encode_batch

    return [model(**on_model(model, encode_batch(processor, i, q)), use_cache=False, logits_to_keep=1).logits
            for i, q in chunks(images, questions)]


@torch.no_grad()
def run_published(model, processor, images, questions):
    """Eager attention, every map materialised, one row of each kept."""
    from bye.detect.extract import image_token_id
    from bye.models.chat import encode_batch

    model.set_attn_implementation("eager")
    try:
        picked = []
        for chunk_images, chunk_questions in chunks(images, questions):
            encoded = on_model(model, encode_batch(processor, chunk_images, chunk_questions))
            out = model(**encoded, use_cache=False, logits_to_keep=1, output_attentions=True)
            rows = torch.stack([a[:, :, -1, :].float().mean(dim=1) for a in out.attentions], dim=1)  # (B, L, T)
            is_image = encoded["input_ids"] == image_token_id(model, processor)
            picked += [rows[b][:, is_image[b]] for b in range(rows.shape[0])]
        return np.stack([(p / p.sum(-1, keepdim=True)).cpu().numpy() for p in picked])
    finally:
        model.set_attn_implementation("sdpa")


@torch.no_grad()
def run_published_generate(model, processor, images, questions):
    """The public code's path: per sample, generate one token with every attention map returned."""
    from bye.detect.extract import image_token_id
    from bye.models.chat import encode_prompt
    from bye.models.loading import to_model

    model.set_attn_implementation("eager")
    try:
        token = image_token_id(model, processor)
        out = []
        for image, question in zip(images, questions):
            encoded = to_model(model, encode_prompt(processor, image, question))
            generated = model.generate(**encoded, max_new_tokens=1, do_sample=False, output_attentions=True,
                                       return_dict_in_generate=True)
            prefill = generated.attentions[0]  # per layer (1, H, T, T)
            rows = torch.stack([a[0, :, -1, :].float().mean(dim=0) for a in prefill])  # (L, T)
            picked = rows[:, encoded["input_ids"][0] == token]
            out.append((picked / picked.sum(-1, keepdim=True)).cpu().numpy())
        return np.stack(out)
    finally:
        model.set_attn_implementation("sdpa")


METHODS = {"extraction": run_extraction, "plain_forward": run_plain, "output_attentions": run_published,
           "published_generate": run_published_generate}


def throughput(image_tokens: int, batch_size: int, rounds: int, batches: int = 1) -> dict:
    model, processor = build(image_tokens)
    images, questions = batch(batch_size * batches, image_side(image_tokens))
    # Same numbers before timing anything: the benchmark compares equal work.
    a = run_extraction(model, processor, images, questions)
    c = run_published(model, processor, images, questions)
    d = run_published_generate(model, processor, images, questions)
    max_diff = float(max(np.abs(a - c).max(), np.abs(a - d).max()))
    run_plain(model, processor, images, questions)
    seconds = {name: [] for name in METHODS}
    for _ in range(rounds):
        for name, method in METHODS.items():
            synchronize()
            began = time.perf_counter()
            method(model, processor, images, questions)
            synchronize()
            seconds[name].append(time.perf_counter() - began)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    per_second = {name: len(images) / median[name] for name in METHODS}
    return {
        "image_tokens": image_tokens,
        "batch_size": batch_size,
        "batches": batches,
        "rounds": rounds,
        "prompt_tokens": int(run_plain_length(processor, images, questions)),
        "seconds": seconds,
        "median_seconds": median,
        "samples_per_second": per_second,
        "vs_plain_forward": per_second["extraction"] / per_second["plain_forward"],
        "vs_output_attentions": per_second["extraction"] / per_second["output_attentions"],
        "vs_published_generate": per_second["extraction"] / per_second["published_generate"],
        "max_abs_diff_extraction_vs_output_attentions": max_diff,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def gpu_memory(points: list[int], methods: list[str], batch_size: int) -> list[dict]:
    """Extra device memory of one call: peak allocated during it minus allocated before it."""
    rows = []
    for tokens in points:
        model, processor = build(tokens)
        images, questions = batch(batch_size, image_side(tokens))
        prompt_tokens = run_plain_length(processor, images, questions)
        run_plain(model, processor, images[:1], questions[:1])
        for method in methods:
            synchronize()
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            METHODS[method](model, processor, images, questions)
            synchronize()
            peak = torch.cuda.max_memory_allocated()
            rows.append({"method": method, "image_tokens": tokens, "prompt_tokens": int(prompt_tokens),
                         "batch_size": batch_size, "allocated_before_mb": round(before / 2**20, 1),
                         "peak_allocated_mb": round(peak / 2**20, 1), "extra_mb": round((peak - before) / 2**20, 1)})
            print(f"  memory {method:18s} {tokens:5d} image tokens: +{rows[-1]['extra_mb']:.1f} MB", flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def run_plain_length(processor, images, questions) -> int:
    from bye.models.chat import encode_batch

    return encode_batch(processor, images, questions)["input_ids"].shape[1]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _peak_mb() -> float:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a big
    # parent would report the parent's peak (measured: +450 MB on every cell).
    return _status_mb("VmHWM")


def memory_point(method: str, image_tokens: int, batch_size: int) -> dict:
    """Run in a fresh process: RSS before the call, peak RSS after it."""
    import gc

    model, processor = build(image_tokens)
    images, questions = batch(batch_size, image_side(image_tokens))
    prompt_tokens = run_plain_length(processor, images, questions)
    # The first forward of a process grows RSS by ~250 MB whatever the method (allocator arenas,
    # thread pools); a one-sample plain forward pays that before the measured call.
    run_plain(model, processor, images[:1], questions[:1])
    gc.collect()
    before = _status_mb("VmRSS")
    peak_before = _peak_mb()
    METHODS[method](model, processor, images, questions)
    peak = _peak_mb()
    return {"method": method, "image_tokens": image_tokens, "prompt_tokens": int(prompt_tokens),
            "batch_size": batch_size, "rss_before_mb": round(before, 1),
            "peak_before_call_mb": round(peak_before, 1), "peak_rss_mb": round(peak, 1),
            "extra_mb": round(peak - before, 1)}


def memory(points: list[int], methods: list[str], batch_size: int, threads: int) -> list[dict]:
    rows = []
    # Large blocks straight from mmap, returned on free: without it glibc's adaptive threshold
    # kept freed buffers and the same cell varied by +-40 MB between runs (measured).
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "MALLOC_MMAP_THRESHOLD_": "65536"}
    for tokens in points:
        for method in methods:
            command = [sys.executable, __file__, "--threads", str(threads), "--shape", SETUP["shape"], "--dtype",
                       str(SETUP["dtype"]).removeprefix("torch."), "--memory-point", method, str(tokens),
                       str(batch_size)]
            out = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  memory {method:18s} {tokens:5d} image tokens: +{rows[-1]['extra_mb']:.1f} MB", flush=True)
    return rows


def machine() -> dict:
    return {**common.machine(), "device": str(SETUP["device"]), "dtype": str(SETUP["dtype"]).removeprefix("torch."),
            "shape": SETUP["shape"]}


def describe(m: dict, t: dict) -> str:
    shape = SHAPES[m.get("shape", "small")]
    where = (f"{m['gpu']} (CUDA {m['cuda']}), {m['dtype']}, {m['cpu_count']} CPUs for the processor"
             if "gpu" in m else
             f"{m['cpu_count']} CPUs shared with other jobs (load average {m['load_average_at_start'][0]:.2f} at "
             f"start), {m['torch_threads']} torch thread(s), {m.get('dtype', 'float32')}")
    return (f"Random LLaVA (CLIP {shape['vision_layers']}x{shape['vision_hidden']}, Llama {shape['text_layers']}x"
            f"{shape['text_hidden']}, {shape['text_heads']} heads, {t['parameters'] / 1e6:.1f} M parameters), batch "
            f"{t['batch_size']}" + (f" x {t['batches']} batches per call" if t.get("batches", 1) > 1 else "")
            + f", {t['image_tokens']} image tokens ({t['prompt_tokens']} prompt tokens), median of "
            f"{t['rounds']} interleaved rounds, encoding included. Machine: {where}, torch {m['torch']}, "
            f"transformers {m['transformers']}.")


def markdown(result: dict) -> str:
    t, m = result["throughput"], result["machine"]
    sps = t["samples_per_second"]
    by_size = result["throughput_by_image_tokens"]
    lines = [
        "# Attention extraction benchmark",
        "",
        describe(m, t),
        "",
        "| path | samples/s | extraction ratio |",
        "|---|---|---|",
        f"| (a) extraction (`image_attention`) | {sps['extraction']:.2f} | 1 |",
        f"| (b) plain SDPA forward | {sps['plain_forward']:.2f} | {result['vs_plain_forward']:.2f}x (a/b) |",
        f"| (c) eager + output_attentions, batched prefill | {sps['output_attentions']:.2f} | "
        f"{result['vs_output_attentions']:.2f}x (a/c) |",
        f"| (d) published: `generate(max_new_tokens=1, output_attentions=True)`, eager, one sample at a time | "
        f"{sps['published_generate']:.2f} | {result['vs_published_generate']:.2f}x (a/d) |",
        "",
        f"(a), (c) and (d) agree to {t['max_abs_diff_extraction_vs_output_attentions']:.1e} (max abs). (c) is the "
        "published computation batched; (d) is how the public code runs it, one sample at a time.",
        "",
        "| image tokens | prompt tokens | (a) samples/s | a/b | a/c | a/d |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['image_tokens']} | {r['prompt_tokens']} | {r['samples_per_second']['extraction']:.2f} | "
              f"{r['vs_plain_forward']:.2f}x | {r['vs_output_attentions']:.2f}x | {r['vs_published_generate']:.2f}x |"
              for r in by_size]
    lines += [
        "",
        "Targets: a/b >= 0.9x " + ("met at every size" if all(r["vs_plain_forward"] >= 0.9 for r in by_size)
                                    else "NOT met at every size")
        + "; a/d (the published path) >= 3x met at "
        + (", ".join(f"{r['image_tokens']} image tokens" for r in by_size if r["vs_published_generate"] >= 3)
           or "no size")
        + "; a/c (the published computation batched) >= 3x met at "
        + (", ".join(f"{r['image_tokens']} image tokens" for r in by_size if r["vs_output_attentions"] >= 3)
           or "no size") + ".",
    ]
    if not result["memory"]:
        return "\n".join(lines + ["", "(memory curve not measured in this run)", ""])
    lines += [
        "",
        (f"Extra memory of one call (peak allocated GPU memory minus allocated before it, batch "
         if "gpu" in m else "Extra memory of one call (peak RSS minus RSS before it, fresh process per cell, batch ")
        + f"{result['memory'][0]['batch_size']}), MB:",
        "",
    ]
    methods = list(dict.fromkeys(r["method"] for r in result["memory"]))
    lines.append("| image tokens | prompt tokens | " + " | ".join(methods) + " |")
    lines.append("|---" * (2 + len(methods)) + "|")
    for tokens in dict.fromkeys(r["image_tokens"] for r in result["memory"]):
        cells = {r["method"]: r for r in result["memory"] if r["image_tokens"] == tokens}
        prompt = next(iter(cells.values()))["prompt_tokens"]
        lines.append(f"| {tokens} | {prompt} | " + " | ".join(f"{cells[k]['extra_mb']:.1f}" for k in methods) + " |")
    lines += ["", result["memory_note"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memory-point", nargs=3, metavar=("METHOD", "IMAGE_TOKENS", "BATCH"))
    parser.add_argument("--quick", action="store_true", help="fewer rounds and points (smoke run)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shape", default="small", choices=list(SHAPES))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--batches", type=int, default=1,
                        help="batches per timed call (more than one lets the extraction encode ahead)")
    parser.add_argument("--image-tokens", type=int, nargs="+", help="throughput sizes (default 256 576 1024)")
    parser.add_argument("--memory-tokens", type=int, nargs="*",
                        help="memory-curve sizes (default 64 256 576 1024; none: skip the curve)")
    parser.add_argument("--rounds", type=int, help="interleaved timing rounds (default 5)")
    parser.add_argument("--name", help="result file stem (default extract, or extract_<device>_<shape>)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because the cores are shared with other jobs, where "
                             "2 OpenMP threads made every path 10-30x slower and erratic (measured)")
    args = parser.parse_args()
    SETUP.update(shape=args.shape, device=torch.device(args.device), dtype=getattr(torch, args.dtype),
                 batch_size=args.batch_size)
    gpu = SETUP["device"].type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.memory_point:
        method, tokens, batch_size = args.memory_point
        SETUP["batch_size"] = int(batch_size)
        print(json.dumps(memory_point(method, int(tokens), int(batch_size))))
        return
    began = time.perf_counter()
    info = machine()
    print(f"throughput ... ({info['cpu_count']} CPUs, load {info['load_average_at_start'][0]:.2f})", flush=True)
    by_size = []
    sizes = args.image_tokens or ([576] if args.quick else [256, 576, 1024])
    for tokens in sizes:
        by_size.append(throughput(image_tokens=tokens, batch_size=args.batch_size, batches=args.batches,
                                  rounds=args.rounds or (3 if args.quick else 5)))
        print(f"  {tokens} image tokens, samples/s {by_size[-1]['samples_per_second']}", flush=True)
    # LLaVA-1.5's image-token count when measured, else the largest size.
    t = next((r for r in by_size if r["image_tokens"] == 576), by_size[-1])
    points = args.memory_tokens if args.memory_tokens is not None else ([64, 1024] if args.quick else [64, 256, 576, 1024])
    if not points:
        mem = []
    elif gpu:
        mem = gpu_memory(points, list(METHODS), batch_size=args.batch_size)
    else:
        mem = memory(points, list(METHODS), batch_size=args.batch_size, threads=args.threads)
    extra = {m: [r["extra_mb"] for r in mem if r["method"] == m] for m in METHODS}
    tokens = [r["prompt_tokens"] for r in mem if r["method"] == "extraction"]
    # Growth exponent of the extra memory between the smallest and largest prompt: ~1 linear, ~2 quadratic.
    slope = {m: float(np.log(max(v[-1], 1e-3) / max(v[0], 1e-3)) / np.log(tokens[-1] / tokens[0]))
             for m, v in extra.items()} if len(tokens) > 1 else {}
    result = {
        "vs_plain_forward": t["vs_plain_forward"],
        "vs_output_attentions": t["vs_output_attentions"],
        "vs_published_generate": t["vs_published_generate"],
        "throughput": t,
        "throughput_by_image_tokens": by_size,
        "memory": mem,
        "memory_growth_exponent": slope,
        "memory_note": (
            "Extra memory includes the forward pass itself (activations, logits of one position) and, for "
            "(c) and (d), the eager vision tower. "
            + ("" if gpu else "Children run with MALLOC_MMAP_THRESHOLD_=65536 so that RSS follows live memory. ")
            + "Growth exponent from the smallest to the largest prompt: "
            + ", ".join(f"{m} {s:.2f}" for m, s in slope.items()) + " (1 = linear, 2 = quadratic)."
        ),
        "machine": info,
        "seconds": time.perf_counter() - began,
    }
    name = args.name or ("extract" if (args.device, args.shape) == ("cpu", "small")
                         else f"extract_{args.device}_{args.shape}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
