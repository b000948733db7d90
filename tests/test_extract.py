"""bye.detect.extract: last-prompt-row image attention without T x T maps.

Every model here is built from a config with random weights (nothing is downloaded; builders in
``families.py``). Six families that transformers ships: LLaVA (CLIP + Llama), Qwen2-VL (multimodal
RoPE, grouped-query attention, image-token count that depends on the image size), Gemma3 (SigLIP +
a language model with q/k norms, a custom attention scale, sliding-window layers and a
bidirectional mask over image tokens), LLaVA-NeXT, InternVL and Idefics3 (each image cut into a
number of crops that depends on its shape). Each is checked against the published reference path: eager attention with
``output_attentions=True``, row -1, image columns, mean over heads, renormalised. The attention
function alone is also checked against Gemma2's (logit soft-capping) and GPT-OSS's (sink logits)
eager functions, which SDPA cannot express. The same row read inside the teacher-forced answer
pass (``answer_pass(attention=True)``, the query at each row's last prompt position) is checked
against the prompt-only pass and the eager reference on all six families.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bye.detect.extract import (
    ATTENTION_NAME,
    image_attention,
    image_token_id,
    layer_entropy,
    recording,
)
from bye.data.submission import images_dir_for, read_manifest, resolve_image
from bye.models.chat import encode_prompt, open_rgb
from families import (
    QUESTIONS,
    build_gemma3,
    build_idefics3,
    build_internvl,
    build_llava,
    build_llava_next,
    build_qwen2_vl,
    images_of,
)

TOLERANCE = 1e-5


def evaluating_model(build):
    """``(model, processor)`` of a family builder, the model in eval mode."""
    model, processor = build()
    return model.eval(), processor


@pytest.fixture(scope="module")
def llava():
    model, processor = build_llava()
    # Random init at 0.02 leaves attention almost uniform; sharper queries make the comparison bite.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(10)
    return model.eval(), processor


@pytest.fixture(scope="module")
def qwen2_vl():
    return evaluating_model(build_qwen2_vl)


@pytest.fixture(scope="module")
def llava_next():
    return evaluating_model(build_llava_next)


@pytest.fixture(scope="module")
def internvl():
    return evaluating_model(build_internvl)


@pytest.fixture(scope="module")
def idefics3():
    return evaluating_model(build_idefics3)


@pytest.fixture(scope="module")
def gemma3():
    return evaluating_model(build_gemma3)


# ---------------------------------------------------------------- reference path (published)

def eager_reference(model, processor, images, questions) -> list[np.ndarray]:
    """One sample at a time, eager attention, output_attentions=True: (L, K_n) per sample."""
    token = image_token_id(model, processor)
    previous = model.config.get_text_config()._attn_implementation
    model.set_attn_implementation("eager")
    try:
        out = []
        for image, question in zip(images, questions):
            inputs = encode_prompt(processor, image, question)
            with torch.no_grad():
                attentions = model(**inputs, output_attentions=True, use_cache=False).attentions
            is_image = inputs["input_ids"][0] == token
            rows = torch.stack([layer[0, :, -1, :].mean(0)[is_image] for layer in attentions])  # (L, K)
            out.append((rows / rows.sum(-1, keepdim=True)).numpy())
        return out
    finally:
        model.set_attn_implementation(previous)


def assert_matches(result, reference):
    assert len(reference) == result.attention.shape[0]
    for n, expected in enumerate(reference):
        k = result.image_token_count[n]
        assert expected.shape == (result.attention.shape[1], k)
        np.testing.assert_allclose(result.attention[n, :, :k], expected, atol=TOLERANCE, rtol=0)
        assert np.isnan(result.attention[n, :, k:]).all()


# ---------------------------------------------------------------- entropy

def test_layer_entropy_is_the_published_formula():
    k = 16
    uniform = np.full((1, 1, k), 1 / k)
    one_hot = np.zeros((1, 1, k))
    one_hot[..., 3] = 1
    padded = np.full((1, 1, k + 8), np.nan)
    padded[..., :k] = 1 / k
    hidden = np.full((1, 1, k), np.nan)  # no image token visible in that layer
    p = np.random.RandomState(0).dirichlet(np.ones(k), size=(2, 3))
    assert layer_entropy(uniform)[0, 0] == pytest.approx(np.log(k), abs=1e-6)
    assert layer_entropy(one_hot)[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert layer_entropy(padded)[0, 0] == pytest.approx(np.log(k), abs=1e-6)
    assert np.isnan(layer_entropy(hidden)[0, 0])
    np.testing.assert_allclose(layer_entropy(p), -(p * np.log(p + 1e-8)).sum(-1))


# ---------------------------------------------------------------- the attention function alone

def _attention_module(kind: str):
    """One decoder attention layer (module only) with logit soft-capping or sink logits."""
    if kind == "softcap":  # Gemma2: tanh soft-capping of the logits
        from transformers import Gemma2Config
        from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, eager_attention_forward

        config = Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              attn_logit_softcapping=2.0, query_pre_attn_scalar=8, vocab_size=16,
                              num_hidden_layers=1)
        return Gemma2Attention(config, 0), eager_attention_forward, {"softcap": 2.0}
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, eager_attention_forward

    config = GptOssConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=16,
                          num_hidden_layers=1, num_local_experts=2, num_experts_per_tok=1)
    module = GptOssAttention(config, 0)
    with torch.no_grad():
        module.sinks.copy_(torch.tensor([2.0, 3.0, 1.0, 2.5]))
    return module, eager_attention_forward, {"s_aux": module.sinks}


@pytest.mark.parametrize("kind", ["softcap", "sinks"])
def test_row_matches_eager_with_softcap_or_sinks_gqa_and_padding(kind):
    from bye.detect.extract import _RECORDER, _last_row_attention

    module, eager, extra = _attention_module(kind)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 7, 8, generator=generator) * 2  # (B, H, T, D), 2 key/value heads
    key, value = (torch.randn(2, 2, 7, 8, generator=generator) * 2 for _ in range(2))
    allowed = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
    allowed[1, :, :, :3] = False  # row 1 left-padded by 3
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected_out, weights = eager(module, query, key, value, additive, scaling=module.scaling, **extra)
    rows: list = []
    token = _RECORDER.set(rows)
    try:
        out, none = _last_row_attention(module, query, key, value, allowed, scaling=module.scaling, **extra)
    finally:
        _RECORDER.reset(token)
    assert none is None and len(rows) == 1
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(rows[0], weights[:, :, -1, :].mean(1), atol=1e-6, rtol=0)
    if kind == "sinks":  # the sink takes its share: the visible keys sum to less than 1
        assert (rows[0].sum(-1) < 0.99).all()
    else:  # soft-capping changed the row (the comparison would not notice a missing tanh otherwise)
        scores = torch.matmul(query[:, :, -1:], key.repeat_interleave(2, dim=1).transpose(-1, -2)) * module.scaling
        uncapped = torch.softmax(scores.squeeze(2) + additive[:, :, -1], dim=-1).mean(1)
        assert (rows[0] - uncapped).abs().max() > 1e-2


# ---------------------------------------------------------------- LLaVA

def test_llava_matches_eager_output_attentions(llava):
    model, processor = llava
    images = images_of([32, 32, 32, 32])
    result = image_attention(model, processor, images, QUESTIONS, batch_size=4, keep_maps=True)
    layers = model.config.text_config.num_hidden_layers
    assert result.attention.shape == (4, layers, 16) and result.attention.dtype == np.float32
    assert (result.image_token_count == 16).all()
    np.testing.assert_allclose(result.attention.sum(-1), 1.0, atol=1e-5)
    assert_matches(result, eager_reference(model, processor, images, QUESTIONS))
    # The comparison is not between two uniform rows.
    assert result.entropy().mean() < 0.9 * np.log(16)
    assert result.maps.dtype == np.float16 and result.maps.shape == result.attention.shape


def test_batched_left_padding_equals_one_by_one(llava):
    model, processor = llava
    images = images_of([32, 32, 32, 32])
    batched = image_attention(model, processor, images, QUESTIONS, batch_size=3)  # batches of 3 and 1
    single = np.concatenate([image_attention(model, processor, [i], [q]).attention
                             for i, q in zip(images, QUESTIONS)])
    np.testing.assert_allclose(batched.attention, single, atol=TOLERANCE, rtol=0)
    assert batched.maps is None


def test_length_batches_group_similar_lengths_and_keep_every_index_once():
    from bye.detect.extract import length_batches

    lengths = [5, 1, 4, 1, 3, 9, 2]
    batches = length_batches(lengths, 3, "x")
    assert batches == [[1, 3, 6], [4, 2, 0], [5]]  # by length, ties in input order
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert length_batches([], 3, "x") == []
    with pytest.raises(ValueError):
        length_batches(lengths, 0, "x")


def test_prefetched_encodes_each_batch_once_in_order_and_passes_errors_on():
    from bye.detect.extract import HostCopy, prefetched

    calls = []

    def encode(indices):
        calls.append(list(indices))
        if indices == [9]:
            raise ValueError("bad record 9")
        return {"ids": torch.tensor(indices)}

    batches = [[2, 0], [1], [3, 4]]
    out = list(prefetched(batches, encode))
    assert [i for i, _ in out] == batches
    assert [e["ids"].tolist() for _, e in out] == batches
    assert calls == batches
    assert list(prefetched([], encode)) == []
    with pytest.raises(ValueError, match="bad record 9"):
        list(prefetched([[1], [9], [2]], encode))
    rows = torch.rand(2, 3)
    assert HostCopy(rows).get() is rows  # on the CPU nothing is copied


def test_attention_implementation_is_switched_for_the_language_model_only_and_restored(llava):
    model, processor = llava
    text, vision = model.config.text_config, model.config.vision_config
    before = (text._attn_implementation, vision._attn_implementation)
    with recording(model) as rows:
        assert text._attn_implementation == ATTENTION_NAME
        assert vision._attn_implementation == before[1]
        with torch.no_grad():
            model(**encode_prompt(processor, images_of([32])[0], "What?"), use_cache=False)
    assert len(rows) == text.num_hidden_layers and rows[0].ndim == 2
    assert (text._attn_implementation, vision._attn_implementation) == before
    model.train()
    image_attention(model, processor, images_of([32]), ["What?"])
    assert model.training  # mode restored
    model.eval()


def test_works_through_a_peft_wrapper(llava):
    from peft import LoraConfig, get_peft_model

    model, processor = llava
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)$"))
    try:
        images = images_of([32, 32])
        wrapped = image_attention(peft_model, processor, images, QUESTIONS[:2])
        # LoRA B starts at zero, so the wrapped model computes exactly the base model.
        plain = image_attention(peft_model.get_base_model(), processor, images, QUESTIONS[:2])
        np.testing.assert_allclose(wrapped.attention, plain.attention, atol=TOLERANCE, rtol=0)
    finally:
        peft_model.unload()


def test_reads_a_submission(llava, tiny_world):
    model, processor = llava
    samples = read_manifest(tiny_world / "train.json")[:6]
    images_dir = images_dir_for(tiny_world / "train.json")
    images = [open_rgb(resolve_image(images_dir, s.image)) for s in samples]
    result = image_attention(model, processor, images, [s.question for s in samples], batch_size=4)
    assert result.attention.shape == (6, model.config.text_config.num_hidden_layers, 16)
    entropy = result.entropy()
    assert entropy.shape == (6, 3) and np.isfinite(entropy).all() and (entropy <= np.log(16) + 1e-6).all()


def test_rejects_mismatched_inputs(llava):
    model, processor = llava
    with pytest.raises(ValueError):
        image_attention(model, processor, images_of([32]), ["a", "b"])


# ---------------------------------------------------------------- Qwen2-VL

def test_qwen2_vl_variable_image_tokens_match_eager(qwen2_vl):
    model, processor = qwen2_vl
    images = images_of([32, 48, 32, 40])  # 16, 24, 16, 20 image tokens
    result = image_attention(model, processor, images, QUESTIONS, batch_size=4)
    assert result.image_token_count.tolist() == [16, 24, 16, 20]
    assert result.attention.shape == (4, model.config.text_config.num_hidden_layers, 24)
    np.testing.assert_allclose(np.nansum(result.attention, -1), 1.0, atol=1e-5)
    assert_matches(result, eager_reference(model, processor, images, QUESTIONS))
    assert np.nanmean(result.entropy() / np.log(result.image_token_count)[:, None]) < 0.9
    one_by_one = [image_attention(model, processor, [i], [q]).attention[0] for i, q in zip(images, QUESTIONS)]
    for n, single in enumerate(one_by_one):
        np.testing.assert_allclose(result.attention[n, :, : single.shape[1]], single, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("family", ["llava_next", "internvl", "idefics3"])
def test_crops_per_image_match_eager(family, request):
    """LLaVA-NeXT, InternVL and Idefics3 cut each image into crops (4 or 2 here, by its shape):
    image-token counts differ within the batch."""
    model, processor = request.getfixturevalue(family)
    images = images_of([32, 64, 32, 48])
    result = image_attention(model, processor, images, QUESTIONS, batch_size=4)
    assert len(set(result.image_token_count.tolist())) > 1
    assert_matches(result, eager_reference(model, processor, images, QUESTIONS))
    one_by_one = [image_attention(model, processor, [i], [q]).attention[0] for i, q in zip(images, QUESTIONS)]
    for n, single in enumerate(one_by_one):
        np.testing.assert_allclose(result.attention[n, :, : single.shape[1]], single, atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------- Gemma3

def test_gemma3_matches_eager(gemma3):
    model, processor = gemma3
    images = images_of([32, 32, 32, 32])
    result = image_attention(model, processor, images, QUESTIONS, batch_size=4)
    # The processor's image_token_id is the begin-of-image marker; the model's config names the
    # soft tokens the features replace, which is what must be read.
    assert processor.image_token_id != model.config.image_token_id
    assert result.attention.shape == (4, 3, 16) and (result.image_token_count == 16).all()
    np.testing.assert_allclose(result.attention.sum(-1), 1.0, atol=1e-5)
    assert_matches(result, eager_reference(model, processor, images, QUESTIONS))
    assert result.entropy().mean() < 0.9 * np.log(16)


def test_gemma3_sliding_window_hides_image_tokens_like_eager():
    model, processor = build_gemma3(sliding_window=24)
    model.eval()
    images = images_of([32, 32, 32, 32])
    result = image_attention(model, processor, images, QUESTIONS, batch_size=4)
    assert_matches(result, eager_reference(model, processor, images, QUESTIONS))
    entropy = result.entropy()
    # Layer 1 is global and sees all 16 image tokens; in the windowed layers 0 and 2 the long
    # question leaves none in view (NaN, not a fake 0), the short ones leave only some.
    assert np.isfinite(entropy[:, 1]).all()
    assert np.isnan(entropy[1, [0, 2]]).all()
    visible = ~np.isnan(result.attention[0, 0]) & (result.attention[0, 0] > 0)
    assert 0 < visible.sum() < 16


# ---------------------------------------------------------------- attention inside the answer pass

ANSWERS = ["red", "Backdoor Attack!", "B", "two circles and a square"]


def test_query_positions_read_earlier_rows_under_the_causal_mask():
    from bye.detect.extract import _head_mean_last_row

    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, 7, 8, generator=generator) * 2
    key = torch.randn(2, 2, 7, 8, generator=generator) * 2
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    scores = torch.matmul(query, key.repeat_interleave(2, dim=1).transpose(-1, -2)) * 8 ** -0.5
    weights = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1).mean(1)  # (B, T, T)
    positions = torch.tensor([3, 5])
    expected = torch.stack([weights[0, 3], weights[1, 5]])
    # No mask at all (SDPA's causal shortcut): the keys after each query are hidden by the function.
    got = _head_mean_last_row(query, key, None, None, None, None, None, positions)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert (got[0, 4:] == 0).all() and (got[1, 6:] == 0).all()
    # A 4-D mask with a batch dimension of 1 is broadcast to every row.
    got = _head_mean_last_row(query, key, causal[None, None], None, None, None, None, positions)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3", "llava_next", "internvl", "idefics3"])
def test_answer_pass_reads_the_prompt_attention_and_the_same_loglik(family, request):
    from bye.detect.signals import answer_loglik, answer_pass

    model, processor = request.getfixturevalue(family)
    images = images_of({"qwen2_vl": [32, 48, 32, 40], "llava_next": [32, 64, 32, 48], "internvl": [32, 64, 32, 48],
                        "idefics3": [32, 64, 32, 48]}.get(family, [32, 32, 32, 32]))
    fused = answer_pass(model, processor, images, QUESTIONS, ANSWERS, batch_size=3, attention=True, keep_maps=True)
    # The attention row of the last prompt position, as the prompt-only pass and the published
    # eager path read it, although every row goes on with an answer of its own length.
    assert_matches(fused.attention, eager_reference(model, processor, images, QUESTIONS))
    alone = image_attention(model, processor, images, QUESTIONS, batch_size=4)
    np.testing.assert_allclose(fused.attention.attention, alone.attention, atol=TOLERANCE, rtol=0)
    assert fused.attention.maps.dtype == np.float16
    loglik, tokens = answer_loglik(model, processor, images, QUESTIONS, ANSWERS, batch_size=3)
    np.testing.assert_allclose(fused.loglik, loglik, atol=1e-6, rtol=0)
    # Per-token processor outputs (Qwen2-VL's mm_token_type_ids, Gemma3's token_type_ids) are
    # padded with the text rows: a left-padded batch scores each answer as the sample alone.
    single = np.concatenate([answer_loglik(model, processor, [i], [q], [a])[0]
                             for i, q, a in zip(images, QUESTIONS, ANSWERS)])
    np.testing.assert_allclose(loglik, single, atol=1e-5, rtol=0)
    assert (fused.n_tokens == tokens).all() and len(set(tokens.tolist())) > 1
    assert answer_pass(model, processor, images, QUESTIONS, ANSWERS).attention is None
