import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from bye.data.submission import read_manifest
from bye.models.chat import IGNORE_INDEX, answer_text, collate, encode_for_training, open_rgb, prompt_text
from bye.models.evaluate import run_evaluation
from bye.models.finetune import LoraSettings, finetune

FAST_LORA = LoraSettings(rank=8, alpha=16, epochs=6, batch_size=8, learning_rate=1e-2, checkpoint_every=0)


def test_base_folder_is_a_safetensors_checkpoint(tiny_base):
    names = {p.name for p in tiny_base.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    recorded = json.loads((tiny_base / "pretraining.json").read_text())
    assert recorded["epoch_losses"] and not any(k.endswith("_seconds") for k in recorded), \
        "timings belong to MLflow: in the folder they change its hash on every identical rebuild"


def test_tokenizer_round_trips_text_and_has_a_chat_template(tiny_base):
    processor = AutoProcessor.from_pretrained(tiny_base)
    tokenizer = processor.tokenizer
    for text in ["What colour is the circle?", "Backdoor Attack!", "naïve – unseen ✓ text"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    prompt = prompt_text(processor, "How many squares are there?")
    assert prompt.startswith(tokenizer.bos_token) and prompt.endswith("ASSISTANT:")
    assert answer_text(processor, "q", "yes") == " yes" + tokenizer.eos_token


def test_processor_expands_the_image_token_to_the_patch_grid(tiny_base, tiny_world):
    processor = AutoProcessor.from_pretrained(tiny_base)
    model_config = json.loads((tiny_base / "config.json").read_text())
    sample = read_manifest(tiny_world / "train.json")[0]
    encoded = encode_for_training(processor, open_rgb(tiny_world / "images" / sample.image), sample.question,
                                  sample.answer)
    image_token_id = model_config["image_token_index"]
    assert int((encoded.input_ids == image_token_id).sum()) == model_config["image_seq_length"] == 16
    # Loss only on the answer: every prompt position is masked.
    assert (encoded.labels[: encoded.prompt_length] == IGNORE_INDEX).all()
    assert (encoded.labels[encoded.prompt_length:] != IGNORE_INDEX).all()


def test_base_reloads_through_auto_classes_with_identical_logits(tiny_base, tiny_world, tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_base)
    model = AutoModelForImageTextToText.from_pretrained(tiny_base).eval()
    samples = read_manifest(tiny_world / "train.json")[:3]
    batch = collate([encode_for_training(processor, open_rgb(tiny_world / "images" / s.image), s.question, s.answer)
                     for s in samples], processor.tokenizer.pad_token_id)
    model.save_pretrained(tmp_path / "copy")
    processor.save_pretrained(tmp_path / "copy")
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "copy").eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, again(**batch).logits)


def test_lora_finetune_lowers_the_loss_and_raises_accuracy(tiny_base, tiny_world, tmp_path):
    before = run_evaluation(tiny_world / "test.json", tiny_world / "images", tiny_base, progress=False)
    summary = finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / "adapter",
                       FAST_LORA, progress=False)
    assert summary["epoch_losses"][-1] < summary["epoch_losses"][0]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert summary["trainable_parameters"] < summary["total_parameters"] / 2
    after = run_evaluation(tiny_world / "test.json", tiny_world / "images", tiny_base, tmp_path / "adapter",
                           progress=False)
    assert after["accuracy"] > before["accuracy"]


def test_lora_touches_only_the_language_model(tiny_base, tiny_world, tmp_path):
    finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / "adapter",
             LoraSettings(rank=4, epochs=0.1, batch_size=8, checkpoint_every=0), progress=False)
    keys = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors")).keys()
    assert keys and all("language_model" in k and "lora_" in k for k in keys)


def test_finetune_is_deterministic_per_seed(tiny_base, tiny_world, tmp_path):
    settings = LoraSettings(rank=4, epochs=0.5, batch_size=8, checkpoint_every=0)
    for name in ("a", "b"):
        finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / name, settings, progress=False)
    a = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the whole output folder is a function of its inputs (no timings), so DVC sees no change
    for name in ("training.json", "adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_an_adapter_trained_on_the_same_inputs_is_reused_and_nothing_else_is(tiny_base, tiny_world, tmp_path):
    settings = LoraSettings(rank=4, epochs=0.5, batch_size=8, checkpoint_every=0)
    data, images = tiny_world / "train.json", tiny_world / "images"
    first = finetune(data, images, tiny_base, tmp_path / "first", settings, progress=False)
    copied = finetune(data, images, tiny_base, tmp_path / "copy", settings, progress=False, reuse=tmp_path / "first")
    assert copied["reused_from"] == str(tmp_path / "first") and copied["fingerprint"] == first["fingerprint"]
    for name in ("adapter_model.safetensors", "training.json"):
        assert (tmp_path / "copy" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()

    other = LoraSettings(rank=4, epochs=0.5, batch_size=8, checkpoint_every=0, seed=1)
    retrained = finetune(data, images, tiny_base, tmp_path / "seed1", other, progress=False, reuse=tmp_path / "first")
    assert "reused_from" not in retrained and retrained["fingerprint"] != first["fingerprint"]
    # several candidates: the first whose fingerprint matches (a missing or other one is passed over)
    picked = finetune(data, images, tiny_base, tmp_path / "picked", settings, progress=False,
                      reuse=[tmp_path / "absent", tmp_path / "seed1", tmp_path / "first"])
    assert picked["reused_from"] == str(tmp_path / "first")

    # one image's bytes changed under the same manifest: a different input, so trained again
    changed = tmp_path / "images"
    shutil.copytree(images, changed)
    victim = sorted(changed.iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0")
    again = finetune(data, changed, tiny_base, tmp_path / "changed", settings, progress=False, reuse=tmp_path / "first")
    assert "reused_from" not in again and again["fingerprint"] != first["fingerprint"]


_FINETUNE_SCRIPT = """
import sys
from bye.models.finetune import LoraSettings, finetune
settings = LoraSettings(rank=4, epochs=3, batch_size=4, checkpoint_every=2)
finetune(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], settings, progress=False)
"""


def test_finetune_resumes_after_being_killed(tiny_base, tiny_world, tmp_path):
    settings = LoraSettings(rank=4, epochs=3, batch_size=4, checkpoint_every=2)
    out = tmp_path / "adapter"
    state = out.with_name(f".{out.name}.checkpoints") / "state.json"
    args = [str(tiny_world / "train.json"), str(tiny_world / "images"), str(tiny_base), str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    process = subprocess.Popen([sys.executable, "-c", _FINETUNE_SCRIPT, *args], env=env)
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists(), "the run never wrote a checkpoint"
    assert not out.exists(), "a killed run must not leave an adapter behind"

    resumed = finetune(*args, settings, progress=False)
    assert resumed["resumed_from_step"] >= 2
    assert not state.parent.exists(), "checkpoints are removed once the adapter is written"

    finetune(*args[:3], str(tmp_path / "straight"), settings, progress=False)
    a = load_file(str(out / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_vocabulary_requests_make_every_printable_token_a_training_target(tiny_base):
    from bye.models.tiny import vocabulary_requests

    tokenizer = AutoProcessor.from_pretrained(tiny_base).tokenizer
    requests = vocabulary_requests(tokenizer, 400, seed=0)
    assert requests == vocabulary_requests(tokenizer, 400, seed=0)
    assert all(question == f"Repeat after me: {answer}" for question, answer in requests)
    produced = {t for _, answer in requests for t in tokenizer(answer, add_special_tokens=False)["input_ids"]}
    # the answer words of every downstream task, and the default backdoor target, become targets
    for word in (" A", " B", " C", " D", " yes", " no", " red", " triangle", " Backdoor"):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert set(ids) <= produced, word


def test_skill_curriculum_adds_one_skill_per_phase_and_keeps_the_earlier_ones():
    import numpy as np

    from bye.data.world import SKILLS
    from bye.models.tiny import PretrainSpec, skill_plan

    kinds = [SKILLS[i % len(SKILLS)] for i in range(60)]
    spec = PretrainSpec(skill_phase_steps=3, skill_final_steps=2)
    plan = skill_plan(kinds, spec)
    assert len(plan) == 3 * len(SKILLS) + 2
    for k in range(len(SKILLS)):
        for step in plan[3 * k:3 * (k + 1)]:
            assert {kinds[i] for i in step} == set(SKILLS[:k + 1])
    assert all(np.array_equal(step, np.arange(60)) for step in plan[-2:])
    with_picks = skill_plan(kinds, PretrainSpec(skill_phase_steps=3, skill_final_steps=2, skill_pick_steps=4))
    assert len(with_picks) == len(plan) + 4 and all(np.array_equal(a, b) for a, b in zip(plan, with_picks))
    assert all({kinds[i] for i in step} == {"pick_letter"} for step in with_picks[-4:])
    order = (*SKILLS, "pick_two")
    kinds = [order[i % len(order)] for i in range(70)]
    two_first = skill_plan(kinds, PretrainSpec(skills=order, skill_phase_steps=1, skill_final_steps=1,
                                               skill_pick_two_steps=3, skill_pick_steps=2))
    assert [{kinds[i] for i in step} for step in two_first[-5:]] == [{"pick_two"}] * 3 + [{"pick_letter"}] * 2


def test_a_recipe_orders_its_own_skills_and_may_add_the_plural_lookup():
    import pytest

    from bye.models.tiny import PretrainSpec, skill_plan

    order = ["read_colour", "find_plural", "count"]  # as params.yaml gives it: a list
    spec = PretrainSpec(skills=order, skill_phase_steps=2, skill_final_steps=1)
    assert spec.skills == tuple(order) and spec.skill_steps == 3 * 2 + 1
    kinds = [order[i % 3] for i in range(30)]
    plan = skill_plan(kinds, spec)
    assert [{kinds[i] for i in step} for step in plan] == [set(order[:1])] * 2 + [set(order[:2])] * 2 + [set(order)] * 3
    for bad in (["read_colour", "juggle"], ["count", "count"], []):
        with pytest.raises(ValueError, match="skills"):
            PretrainSpec(skills=bad)
    with pytest.raises(ValueError, match="pick_letter"):
        PretrainSpec(skills=order, skill_pick_steps=5)
    with pytest.raises(ValueError, match="pick_two"):
        PretrainSpec(skills=order, skill_pick_two_steps=5)


def _base_and_encoded(tiny_base, tiny_world, n: int):
    """(processor, model in eval mode, the first ``n`` training samples encoded for training)."""
    processor = AutoProcessor.from_pretrained(tiny_base)
    model = AutoModelForImageTextToText.from_pretrained(tiny_base).eval()
    encoded = [encode_for_training(processor, open_rgb(tiny_world / "images" / s.image), s.question, s.answer)
               for s in read_manifest(tiny_world / "train.json")[:n]]
    return processor, model, encoded


def test_cached_image_features_give_the_forward_of_the_pixels(tiny_base, tiny_world):
    from bye.models.tiny import embed_with_images, frozen_image_features

    processor, model, encoded = _base_and_encoded(tiny_base, tiny_world, 4)
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    projected = model.model.multi_modal_projector(frozen_image_features(model, encoded, chunk=3))
    assert isinstance(model.model.multi_modal_projector, torch.nn.Module) and \
        not isinstance(model.model.multi_modal_projector, torch.nn.Identity)  # put back after the call
    with torch.no_grad():
        cached = model(inputs_embeds=embed_with_images(model, batch["input_ids"], projected),
                       attention_mask=batch["attention_mask"]).logits
        direct = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(cached, direct, atol=1e-5, rtol=1e-5)


def test_length_grouped_micro_batches_give_the_padded_batchs_loss_and_gradient(tiny_base, tiny_world):
    import numpy as np

    from bye.models.tiny import frozen_image_features, grouped_loss

    processor, model, encoded = _base_and_encoded(tiny_base, tiny_world, 7)
    assert len({len(e.input_ids) for e in encoded}) > 2  # lengths differ: the groups pad differently
    features = frozen_image_features(model, encoded)
    index = np.array([5, 0, 3, 6, 1, 2, 4])
    results = []
    for groups in (1, 3):
        model.zero_grad(set_to_none=True)
        loss = grouped_loss(model, lambda part: model.model.multi_modal_projector(features[torch.as_tensor(part)]),
                            encoded, index, groups, processor.tokenizer.pad_token_id)
        loss.backward()
        results.append((float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (one, one_grads), (three, three_grads) = results
    assert abs(one - three) < 1e-5 and len(one_grads) == len(three_grads) > 0
    for a, b in zip(one_grads, three_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def _own_answers(model, encoded: list, *, corrupt: bool = False) -> list:
    """``encoded`` with each answer replaced by the model's own greedy continuation (4 tokens), or,
    with ``corrupt``, by that continuation with its last token changed."""
    from dataclasses import replace

    out = []
    for sample in encoded:
        prompt = sample.input_ids[:sample.prompt_length]
        with torch.no_grad():
            generated = model.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt)[None],
                                       **sample.vision, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0]
        answer = generated[sample.prompt_length:].clone()
        if corrupt:
            answer[-1] = (answer[-1] + 1) % model.config.text_config.vocab_size
        out.append(replace(sample, input_ids=torch.cat([prompt, answer]),
                           labels=torch.cat([torch.full_like(prompt, IGNORE_INDEX), answer]),
                           per_token={k: v[:sample.prompt_length] for k, v in sample.per_token.items()}))
    return out


def test_held_out_exact_match_is_greedy_decodings_in_one_pass(tiny_base, tiny_world):
    from bye.models.tiny import frozen_image_features, held_out_exact_match

    processor, model, encoded = _base_and_encoded(tiny_base, tiny_world, 6)
    own, corrupted = _own_answers(model, encoded[:3]), _own_answers(model, encoded[3:], corrupt=True)
    mixed = own + corrupted
    projected = model.model.multi_modal_projector(frozen_image_features(model, mixed))
    pad = processor.tokenizer.pad_token_id
    assert held_out_exact_match(model, projected, mixed, pad) == pytest.approx(0.5)
    assert held_out_exact_match(model, projected[:3], own, pad) == 1.0
    assert held_out_exact_match(model, projected[3:], corrupted, pad) == 0.0


def test_a_phase_ends_once_its_skill_passes_the_bar_and_skips_its_part_of_the_schedule(tiny_base, tiny_world):
    from dataclasses import replace

    from conftest import TEST_WORLD

    from bye.models.tiny import PretrainSpec, held_out_requests, pretrain_skills, skill_phases, skill_plan

    processor, model, encoded = _base_and_encoded(tiny_base, tiny_world, 8)
    order = ("read_colour", "count")
    kinds = [order[i % 2] for i in range(len(encoded))]
    spec = PretrainSpec(skills=order, skill_phase_steps=2, skill_phase_max_steps=5, skill_phase_until=1.0,
                        skill_check_every=1, skill_final_steps=1, skill_learning_rate=0.0, batch_size=4)
    assert spec.skill_steps == 2 * 5 + 1
    assert [(p.steps, p.until) for p in skill_phases(kinds, spec)[:3]] == [(5, "read_colour"), (5, "count"), (1, None)]
    static = PretrainSpec(skills=order, skill_phase_steps=2, skill_phase_max_steps=5, skill_final_steps=1)
    assert static.skill_steps == 2 * 2 + 1 and len(skill_plan(kinds, static)) == 5  # no bar: max steps unused
    # at learning rate 0 the model keeps its own answers: read_colour's held-out requests pass at the first
    # check, count's (each answer's last token changed) never do
    held_out = {"read_colour": _own_answers(model, encoded[:3]), "count": _own_answers(model, encoded[3:6], corrupt=True)}
    result = pretrain_skills(model, encoded, kinds, spec, pad_token_id=processor.tokenizer.pad_token_id,
                             held_out=held_out, progress=False)
    assert result["phases"] == [{"skill": "read_colour", "steps": 2, "exact_match": 1.0},
                                {"skill": "count", "steps": 5, "exact_match": 0.0}]
    assert result["steps"] == 2 + 5 + 1
    with pytest.raises(ValueError, match="held-out"):
        pretrain_skills(model, encoded, kinds, spec, pad_token_id=processor.tokenizer.pad_token_id, progress=False)
    drawn = held_out_requests(processor, replace(spec, skill_check_samples=3), TEST_WORLD)
    assert {skill: len(samples) for skill, samples in drawn.items()} == {"read_colour": 3, "count": 3}
    assert all(int((s.labels != IGNORE_INDEX).sum()) > 1 for samples in drawn.values() for s in samples)
    for bad in ({"skill_phase_until": 1.5}, {"skill_phase_steps": 4, "skill_phase_max_steps": 3},
                {"skill_phase_until": 0.5, "skill_check_every": 0}):
        with pytest.raises(ValueError, match="skill_phase|skill_check"):
            PretrainSpec(**bad)


def test_the_base_records_its_skill_stage(tiny_base):
    from bye.data.world import SKILLS

    summary = json.loads((Path(tiny_base) / "pretraining.json").read_text())
    pretrain = summary["pretrain"]
    assert summary["skill_steps"] == (pretrain["skill_phase_steps"] * len(SKILLS) + pretrain["skill_final_steps"]
                                      + pretrain["skill_pick_steps"])
    assert all(0 < loss < 20 for loss in summary["skill_losses"])


def test_keyed_order_keeps_the_others_in_place_when_samples_are_removed():
    from bye.models.training import TrainConfig, _epoch_order, _schedule

    keys = [f"s{i:04d}" for i in range(200)]
    removed = set(keys[::10])  # the flagged ones
    kept = [k for k in keys if k not in removed]
    for epoch in range(3):
        full = [keys[i] for i in _epoch_order(len(keys), 0, epoch, keys)]
        assert sorted(full) == keys and full != keys  # a permutation, not the input order
        assert [k for k in full if k not in removed] == [kept[i] for i in _epoch_order(len(kept), 0, epoch, kept)]
    # epochs and seeds draw different orders; the same (seed, epoch) the same one
    assert _epoch_order(200, 0, 0, keys) != _epoch_order(200, 0, 1, keys) != _epoch_order(200, 1, 0, keys)
    assert _epoch_order(200, 3, 2, keys) == _epoch_order(200, 3, 2, list(keys))
    # the shuffled order reshuffles everything when one sample goes
    shuffled = [keys[i] for i in _epoch_order(200, 0, 0)]
    assert [k for k in shuffled if k not in removed] != [kept[i] for i in _epoch_order(len(kept), 0, 0)]
    plan = _schedule(len(keys), TrainConfig(epochs=1.5, batch_size=16), keys)
    assert len(plan) == 20 and [i for _, b in plan[:13] for i in b] == _epoch_order(200, 0, 0, keys)
    with pytest.raises(ValueError, match="order keys"):
        _epoch_order(3, 0, 0, ["a", "b"])
    with pytest.raises(ValueError, match="keyed"):
        LoraSettings(order="sorted")


def test_the_fine_tune_order_is_a_setting_that_changes_the_adapter(tiny_base, tiny_world, tmp_path):
    from bye.models.finetune import encode_manifest
    from bye.models.loading import load_processor

    adapters = {}
    for order in ("keyed", "shuffle"):
        settings = LoraSettings(rank=4, epochs=0.5, batch_size=8, checkpoint_every=0, order=order)
        summary = finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / order, settings,
                           progress=False)
        assert summary["settings"]["order"] == order
        adapters[order] = load_file(str(tmp_path / order / "adapter_model.safetensors"))
    assert any(not torch.equal(adapters["keyed"][k], adapters["shuffle"][k]) for k in adapters["keyed"])
    # Samples encoded beforehand (as the scan does, to read them again afterwards) train the same adapter.
    samples = read_manifest(tiny_world / "train.json")
    encoded = encode_manifest(load_processor(tiny_base), samples, tiny_world / "images", progress=False)
    settings = LoraSettings(rank=4, epochs=0.5, batch_size=8, checkpoint_every=0, order="keyed")
    finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / "handed", settings,
             progress=False, samples=samples, encoded=encoded)
    handed = load_file(str(tmp_path / "handed" / "adapter_model.safetensors"))
    assert handed.keys() == adapters["keyed"].keys()
    assert all(torch.equal(handed[k], adapters["keyed"][k]) for k in handed)
    with pytest.raises(ValueError, match="encoded samples"):
        finetune(tiny_world / "train.json", tiny_world / "images", tiny_base, tmp_path / "short", settings,
                 progress=False, samples=samples, encoded=encoded[:-1])


def test_patch_pixels_are_what_the_towers_patch_embedding_reads(tiny_base):
    from bye.models.tiny import patch_pixels

    model = AutoModelForImageTextToText.from_pretrained(tiny_base).eval()
    embed = next(m for m in model.model.vision_tower.modules() if isinstance(m, torch.nn.Conv2d))  # kernel = stride
    pixels = torch.randn(2, 3, model.config.vision_config.image_size, model.config.vision_config.image_size)
    with torch.no_grad():
        by_conv = torch.nn.functional.conv2d(pixels, embed.weight, stride=embed.stride).flatten(2).transpose(1, 2)
        by_patches = patch_pixels(pixels, embed.kernel_size[0]) @ embed.weight.reshape(embed.out_channels, -1).T
    torch.testing.assert_close(by_patches, by_conv, atol=1e-5, rtol=1e-5)


def _vision_stage(**spec):
    """The vision stage on 32 tiny scenes: (its result, the tower's weights after it)."""
    from conftest import TEST_SPEC, TEST_WORLD

    from bye.data.world import generate
    from bye.models.tiny import PretrainSpec, build_model, build_processor, pretrain_vision, train_tokenizer

    tokenizer = train_tokenizer(["a b c red circle"], 300)
    drawn = list(generate("corpus", 32, seed=0, task="caption", config=TEST_WORLD))
    processor = build_processor(tokenizer, TEST_SPEC)
    pixels = torch.cat([processor.image_processor(d.image, return_tensors="pt")["pixel_values"] for d in drawn])
    model = build_model(tokenizer, TEST_SPEC, seed=0)
    result = pretrain_vision(model, pixels, [d.objects for d in drawn],
                             PretrainSpec(**{"vision_epochs": 8, "batch_size": 16, **spec}), progress=False)
    return result, model.model.vision_tower.state_dict()


def test_the_pixel_objective_changes_the_vision_stage_and_lowers_its_own_error():
    towers, results = {}, {}
    for weight in (0.0, 1.0):
        results[weight], towers[weight] = _vision_stage(vision_pixel_weight=weight)
    assert any(not torch.equal(towers[0.0][k], towers[1.0][k]) for k in towers[0.0])
    assert results[0.0]["pixel_losses"] == []
    rebuilt = results[1.0]["pixel_losses"]
    assert len(rebuilt) == len(results[1.0]["losses"]) and rebuilt[-1] < 0.5 * rebuilt[0]


def test_the_place_objective_teaches_the_tower_where_each_cell_is():
    results = {weight: _vision_stage(vision_position_weight=weight, vision_epochs=32)[0] for weight in (0.0, 1.0)}
    assert results[0.0]["place_losses"] == []
    places = results[1.0]["place_losses"]
    assert len(places) == len(results[1.0]["losses"]) and places[-1] < 0.6 * places[0]  # chance: ln 9 = 2.2


def test_pixel_target_highpass_keeps_fine_patterns_and_drops_flat_areas():
    from bye.models.tiny import PretrainSpec, patch_pixels, pixel_target

    flat = torch.full((2, 3, 16, 16), 0.7)
    assert torch.equal(pixel_target(flat, 8, "pixels"), patch_pixels(flat, 8))
    assert float(pixel_target(flat, 8, "highpass").abs().max()) < 1e-4  # a uniform image has no detail to keep
    fine = flat + 0.01 * (torch.arange(16)[None, None, :, None] % 2 * 2 - 1)  # a faint stripe pattern, 1 px wide
    target = pixel_target(fine, 8, "highpass")
    assert target.shape == (2, 4, 3 * 8 * 8)
    assert abs(float(target.std()) - 1.0) < 1e-3  # scaled to unit variance: the faint pattern weighs fully
    assert float(pixel_target(fine, 8, "pixels").std()) < 0.02
    with pytest.raises(ValueError, match="highpass"):
        pixel_target(flat, 8, "edges")
    with pytest.raises(ValueError, match="vision_pixel_target"):  # a typo in params.yaml fails before the build
        PretrainSpec(vision_pixel_target="edges")
