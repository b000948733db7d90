"""The product's whole path on other model families than the embedded LLaVA: fine-tune, evaluate
and scan run unchanged on a Gemma3 checkpoint saved to disk (its processor wants one list of
images per prompt) and, in memory, on Qwen2-VL (pixel patches concatenated across samples, an
image-token count that depends on the image size, multimodal RoPE), LLaVA-NeXT, InternVL and
Idefics3 (a different number of image crops per sample). Random weights, nothing downloaded (`families.py`)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bye.cli import main
from bye.data.submission import images_dir_for, read_manifest, resolve_image
from bye.models.chat import encode_for_training, open_rgb
from bye.models.evaluate import generate_answers
from bye.models.finetune import LoraSettings, add_lora
from bye.models.training import train
from families import (
    QUESTIONS,
    build_gemma3,
    build_idefics3,
    build_internvl,
    build_llava_next,
    build_qwen2_vl,
    images_of,
)
from tiny import poison_and_scan

PARAMS = ("finetune: {rank: 4, alpha: 8, batch_size: 8, checkpoint_every: 0, epochs: 2, learning_rate: 0.005}\n"
          "provisional: {epochs: 1}\nextract: {batch_size: 8}\n")


@pytest.fixture(scope="module")
def gemma3_dir(tmp_path_factory):
    model, processor = build_gemma3()
    out = tmp_path_factory.mktemp("gemma3") / "base"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


@pytest.mark.parametrize("method", ["bye", "answer_gain"])
def test_scan_runs_on_a_saved_gemma3_checkpoint(gemma3_dir, tiny_world, tmp_path, method):
    poisoned, out = poison_and_scan(tiny_world, gemma3_dir, tmp_path, attack="badnets", params=PARAMS,
                                    scan_args=("--method", method))
    samples = read_manifest(poisoned / "train.json")
    scores = pd.read_csv(out / "scores.csv", dtype={"id": str})
    assert list(scores["id"]) == [s.id for s in samples] and scores["score"].notna().all()
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["method"] == method and verdict["n_samples"] == len(samples)
    assert [s.id for s in read_manifest(out / "filtered.json")] == list(scores.loc[~scores["flagged"], "id"])
    if method == "bye":  # Gemma3's 16 image tokens per image, one entropy per language-model layer
        assert {"entropy_l0", "entropy_l1", "entropy_l2"} <= set(scores.columns)
        assert (scores.filter(like="entropy_l").to_numpy() <= 2.7726 + 1e-6).all()


def test_finetune_and_eval_run_on_a_saved_gemma3_checkpoint(gemma3_dir, tiny_world, tmp_path):
    runner = CliRunner()
    (tmp_path / "params.yaml").write_text(PARAMS)
    params = ["--params", str(tmp_path / "params.yaml")]
    result = runner.invoke(main, ["finetune", str(tiny_world / "train.json"), "--base", str(gemma3_dir),
                                  "--out", str(tmp_path / "adapter"), *params])
    assert result.exit_code == 0, result.output
    losses = json.loads((tmp_path / "adapter" / "training.json").read_text())["epoch_losses"]
    assert losses[-1] < losses[0]
    for adapter in ([], ["--adapter", str(tmp_path / "adapter")]):
        out = tmp_path / f"metrics{len(adapter)}.json"
        result = runner.invoke(main, ["eval", str(tiny_world / "test.json"), "--base", str(gemma3_dir), *adapter,
                                      "--attack", "badnets", "--out", str(out), *params])
        assert result.exit_code == 0, result.output
        metrics = json.loads(out.read_text())
        assert metrics["n"] == len(read_manifest(tiny_world / "test.json"))
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["asr"] <= 1.0


WIDTHS = {build_gemma3: [32, 32, 32, 32], build_qwen2_vl: [32, 48, 32, 40], build_llava_next: [32, 64, 32, 48],
          build_internvl: [32, 64, 32, 48], build_idefics3: [32, 64, 32, 48]}


@pytest.mark.parametrize("build", list(WIDTHS), ids=["gemma3", "qwen2_vl", "llava_next", "internvl", "idefics3"])
def test_batched_generation_equals_one_by_one(build):
    model, processor = build()
    model.eval()
    images = images_of(WIDTHS[build])
    batched = generate_answers(model, processor, images, QUESTIONS, batch_size=4, max_new_tokens=4, progress=False)
    alone = [generate_answers(model, processor, [i], [q], max_new_tokens=4, progress=False)[0]
             for i, q in zip(images, QUESTIONS)]
    assert batched == alone and len(batched) == len(QUESTIONS)


def test_lora_finetune_of_qwen2_vl_lowers_the_loss(tiny_world):
    model, processor = build_qwen2_vl()
    samples = read_manifest(tiny_world / "train.json")[:32]
    images_dir = images_dir_for(tiny_world / "train.json")
    encoded = [encode_for_training(processor, open_rgb(resolve_image(images_dir, s.image)), s.question, s.answer)
               for s in samples]
    settings = LoraSettings(rank=4, alpha=8, epochs=3, batch_size=8, learning_rate=5e-3, checkpoint_every=0)
    model = add_lora(model, settings)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in name and "lora_" in name for name in trainable)
    result = train(model, encoded, settings.train_config(), pad_token_id=processor.tokenizer.pad_token_id,
                   progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_lora_finetune_of_llava_next_batches_images_of_different_crop_counts():
    """LLaVA-NeXT's processor gives each image its own number of crops; the fine-tune's batches pad
    them as the processor pads a batch (before, concatenating them failed)."""
    model, processor = build_llava_next()
    images = images_of([32, 64, 32, 48] * 4)
    encoded = [encode_for_training(processor, image, QUESTIONS[n % 4], ["yes", "red", "two", "no"][n % 4])
               for n, image in enumerate(images)]
    assert len({s.vision["pixel_values"].shape[1] for s in encoded}) > 1
    settings = LoraSettings(rank=4, alpha=8, epochs=3, batch_size=8, learning_rate=5e-3, checkpoint_every=0)
    model = add_lora(model, settings)
    result = train(model, encoded, settings.train_config(), pad_token_id=processor.tokenizer.pad_token_id,
                   progress=False)
    assert result.epoch_losses[-1] < result.epoch_losses[0]


def test_vision_inputs_pad_the_crop_axis_and_refuse_other_mismatches():
    from bye.models.chat import concatenate_vision

    crops = concatenate_vision("pixel_values", [torch.ones(1, 3, 3, 4, 4), torch.ones(1, 1, 3, 4, 4)])
    assert crops.shape == (2, 3, 3, 4, 4) and crops[1, 1:].abs().sum() == 0 and crops[1, 0].eq(1).all()
    patches = concatenate_vision("pixel_values", [torch.ones(16, 8), torch.ones(24, 8)])  # Qwen2-VL: one axis
    assert patches.shape == (40, 8)
    with pytest.raises(ValueError, match="cannot be batched"):
        concatenate_vision("pixel_values", [torch.ones(1, 3, 4, 4), torch.ones(1, 3, 8, 8)])
