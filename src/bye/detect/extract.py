"""Attention of the answer position to the image tokens, one row per language-model layer.

BYE reads, for every sample and every decoder layer of the language model, the attention of
the last prompt position (the one that predicts the first answer token) to the image-token
keys, averaged over heads and renormalised over the image tokens. The published code gets it
from ``generate(output_attentions=True)`` under eager attention, which materialises every
``H x T x T`` map to keep one row of each. Here a custom attention function is registered with
transformers' ``AttentionInterface`` and selected for the language model only: it returns the
stock SDPA output (the forward pass is unchanged) and, on the side, computes the single softmax
row ``softmax(q_last . K^T * scale + mask_last)`` per layer. Extra memory is ``O(B x H x T)``
per layer instead of ``O(B x H x T^2)``.

Nothing here knows a model family: the language model is found through
``config.get_text_config()``, image positions through the generic ``image_token_id`` /
``image_token_index`` config field, batching and image-token expansion through the checkpoint's
own processor, and position ids through the same helper ``generate`` uses.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bye.models.chat import encode_batch
from bye.models.loading import to_model

ATTENTION_NAME = "bye_last_row"
EPS = 1e-8

# The rows of the forward pass in flight (a list the attention function appends to), or None.
_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("bye_last_row_recorder", default=None)
# Which query position each batch row reads, ``(B,)`` int64, or None for the last column.
_QUERY: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("bye_query_position", default=None)


@dataclass
class ImageAttention:
    """Per-sample, per-layer attention of the last prompt position over the image tokens.

    attention: ``(N, L, K)`` float32. ``N`` samples, ``L`` language-model decoder layers, ``K``
        the largest number of image tokens in the batch. Row ``[n, l, :k_n]`` sums to 1 over the
        ``k_n = image_token_count[n]`` image tokens of sample ``n`` (in prompt order); entries
        beyond ``k_n`` are NaN. With a fixed image-token count (LLaVA) there is no NaN.
    image_token_count: ``(N,)`` int64, image tokens per sample.
    maps: ``(N, L, K)`` float16 copy of ``attention`` when asked for (for reports), else None.
    """

    attention: np.ndarray
    image_token_count: np.ndarray
    maps: np.ndarray | None = None

    @property
    def n_layers(self) -> int:
        return self.attention.shape[1]

    def entropy(self) -> np.ndarray:
        """``(N, L)`` entropy in nats, see :func:`layer_entropy`."""
        return layer_entropy(self.attention)


def layer_entropy(attention: np.ndarray) -> np.ndarray:
    """``H = -sum_t p_t ln(p_t + 1e-8)`` over the last axis, as published (natural log).

    attention: ``(N, L, K)``, NaN-padded beyond each sample's image tokens -> ``(N, L)`` float64.
    The maximum is ``ln(k)`` for ``k`` image tokens. An all-NaN row (no image token visible to
    the last position in that layer) gives NaN, never a misleading 0.
    """
    p = np.asarray(attention, dtype=np.float64)
    entropy = -np.nansum(p * np.log(p + EPS), axis=-1)
    entropy[np.isnan(p).all(axis=-1)] = np.nan
    return entropy


def _last_row_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                        **kwargs) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: stock output, plus the last query's head-mean row.

    query ``(B, H, Q, D)``, key/value ``(B, H_kv, S, D)``, attention_mask None (causal, no
    padding), bool ``(B, 1|H, Q, S)`` (True = attend) or additive float of that shape.
    Appends ``(B, S)`` float32 (softmax over all keys, mean over heads) to the active recorder.
    """
    softcap, sinks = kwargs.get("softcap"), kwargs.get("s_aux")
    if softcap is None and sinks is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        output = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                        scaling=scaling, **kwargs)
    else:
        # SDPA has neither logit soft-capping nor sink logits: run the layer's own eager function,
        # which expects an additive mask.
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        additive = attention_mask
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            additive = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device)
            additive = additive.masked_fill(~attention_mask, torch.finfo(query.dtype).min)
        output = eager(module, query, key, value, additive, dropout=dropout,
                       scaling=scaling if scaling is not None else query.shape[-1] ** -0.5, **kwargs)
    rows = _RECORDER.get()
    if rows is not None:
        rows.append(_head_mean_last_row(query, key, attention_mask, scaling, softcap, sinks,
                                        kwargs.get("position_bias"), _QUERY.get()))
    return output[0], None


def _at(tensor: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """``tensor[b, :, positions[b], :]`` for every row ``b`` of a ``(B|1, H, Q, X)`` tensor: ``(B, H, X)``
    (the last query position for every row when ``positions`` is None)."""
    if positions is None:
        return tensor[:, :, -1, :]
    rows = torch.arange(len(positions), device=tensor.device)
    return tensor.expand(len(positions), *tensor.shape[1:])[rows, :, positions.to(tensor.device), :]


def _head_mean_last_row(query, key, attention_mask, scaling, softcap, sinks, position_bias,
                        positions: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, S)`` float32: softmax row of one query position per batch row (the last one unless
    ``positions`` says otherwise), averaged over the H heads."""
    batch, heads, _, dim = query.shape
    kv_heads, length = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else dim ** -0.5
    # Grouped-query attention without repeat_kv: query head h reads key head h // (H / H_kv).
    # Scores in the model's dtype, as eager attention computes them (no float32 copy of every key),
    # then float32 from the scaling on.
    q = _at(query, positions).reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)).reshape(batch, heads, length).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + _at(position_bias, positions).float()
    if attention_mask is not None:
        row = _at(attention_mask, positions) if attention_mask.ndim == 4 else attention_mask[:, None, :]
        if not row.is_floating_point():
            row = row.bool()
        if row.dtype == torch.bool:
            scores = scores.masked_fill(~row, float("-inf"))
        else:
            scores = scores + row.float()
    if positions is not None and (attention_mask is None or attention_mask.ndim != 4):
        # No per-query mask (a causal call without padding): hide the keys after each row's query.
        later = torch.arange(length, device=scores.device)[None, :] > positions.to(scores.device)[:, None]
        scores = scores.masked_fill(later[:, None, :], float("-inf"))
    if sinks is not None:
        sink = sinks.float().reshape(1, heads, 1).expand(batch, heads, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return probs.mean(dim=1)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _last_row_attention)
    # Masks are built per implementation name; ours wants exactly what SDPA gets.
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _text_config_key(config) -> str:
    """Key of the language model's sub-config in ``config`` ("" when it is the config itself)."""
    text_config = config.get_text_config()
    if text_config is config:
        return ""
    for name in config.sub_configs:
        if getattr(config, name, None) is text_config:
            return name
    raise ValueError(f"{type(config).__name__}: cannot find the language model's sub-config")


@contextlib.contextmanager
def recording(model, positions: torch.Tensor | None = None) -> Iterator[list[torch.Tensor]]:
    """Route the language model's attention through the last-row function while recording.

    Yields the list that each decoder layer appends its ``(B, S)`` row to, in call order: the
    attention of the last position, or of ``positions[b]`` in batch row ``b`` (an earlier one:
    the last prompt position of a sequence that goes on with its answer). The vision tower keeps
    its own implementation; the model's previous one is restored on exit.
    """
    _register()
    key = _text_config_key(model.config)
    text_config = model.config.get_text_config()
    previous = text_config._attn_implementation
    model.set_attn_implementation({key: ATTENTION_NAME} if key else ATTENTION_NAME)
    if text_config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation({key: previous} if key else previous)
        raise RuntimeError(f"{type(model).__name__}: the language model refused attn_implementation={ATTENTION_NAME!r}")
    rows: list[torch.Tensor] = []
    token, query = _RECORDER.set(rows), _QUERY.set(positions)
    try:
        yield rows
    finally:
        _RECORDER.reset(token)
        _QUERY.reset(query)
        model.set_attn_implementation({key: previous} if key else previous)


def image_token_id(model, processor=None) -> int:
    """The placeholder id the processor expands and the model replaces with image features."""
    for config in (model.config, model.config.get_text_config()):
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
    value = getattr(processor, "image_token_id", None)
    if isinstance(value, int):
        return value
    raise ValueError(f"{type(model.config).__name__} has no image_token_id / image_token_index")


def _forward_parameters(model) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper
    return set(inspect.signature(base.forward).parameters)


def prepare_inputs(model, encoded: dict, parameters: set[str]) -> dict:
    """Processor outputs on the model's device and dtype, plus what ``generate`` adds (position ids)."""
    inputs = to_model(model, encoded)
    if "position_ids" in parameters and hasattr(model, "_prepare_position_ids_for_generation"):
        # What generate() does: positions count real tokens only, so a left-padded row gets the
        # same positions (RoPE, or a family's multimodal RoPE) as the sample alone.
        inputs["position_ids"] = model._prepare_position_ids_for_generation(inputs["input_ids"], dict(inputs))
    return inputs


@torch.no_grad()
def recorded_forward(model, inputs: dict, positions: torch.Tensor | None = None, *, host: bool = True):
    """``(outputs, rows)``: one forward of ``model`` on prepared ``inputs``, and per layer the
    head-mean attention of each row's query position (the last one, or ``positions``) over all T
    keys, ``rows`` ``(B, L, T)`` float32 on the CPU (``host=False``: on the model's device, not
    waited for)."""
    with recording(model, positions) as rows:
        outputs = model(**inputs, use_cache=False)
    expected = getattr(model.config.get_text_config(), "num_hidden_layers", len(rows))
    if len(rows) != expected:
        raise RuntimeError(f"{type(model).__name__}: {len(rows)} attention calls for {expected} decoder layers "
                           "(layers that bypass the attention interface cannot be read)")
    stacked = torch.stack(rows, dim=1)
    if stacked.shape[-1] != inputs["input_ids"].shape[1]:
        raise RuntimeError(f"attention over {stacked.shape[-1]} keys for {inputs['input_ids'].shape[1]} input tokens")
    return outputs, stacked.cpu() if host else stacked


class HostCopy:
    """A device tensor's copy to the CPU, started now and waited for in :meth:`get`: the
    accelerator goes on with the work queued after it (the next batch) in the meantime. On the
    CPU it is the tensor itself."""

    def __init__(self, tensor: torch.Tensor):
        self.event = None
        if tensor.device.type == "cpu":
            self.tensor = tensor
        else:
            self.tensor = tensor.to("cpu", non_blocking=True)  # pinned, filled when the stream gets there
            self.event = torch.Event(device=tensor.device)
            self.event.record()

    def get(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor


def image_rows(rows: torch.Tensor, input_ids: torch.Tensor, token_id: int,
               numbers: Sequence[int]) -> list[np.ndarray]:
    """Per batch row ``b``, ``rows[b]`` ``(L, T)`` restricted to the image-token keys and
    renormalised over them: ``(L, K_b)`` float32 (``numbers``: the rows' sample numbers, for the
    error)."""
    is_image = input_ids.cpu() == token_id
    out = []
    for b in range(rows.shape[0]):
        if not bool(is_image[b].any()):
            raise ValueError(f"sample {numbers[b]}: no image token (id {token_id}) in the prompt")
        selected = rows[b][:, is_image[b]]  # (L, K_b)
        out.append((selected / selected.sum(dim=-1, keepdim=True)).numpy())
    return out


def assemble(per_sample: list[np.ndarray], *, keep_maps: bool = False) -> ImageAttention:
    """One :class:`ImageAttention` from per-sample ``(L, K_n)`` rows (NaN-padded to the largest K)."""
    if not per_sample:
        raise ValueError("no samples")
    counts = np.array([p.shape[1] for p in per_sample], dtype=np.int64)
    attention = np.full((len(per_sample), per_sample[0].shape[0], counts.max()), np.nan, dtype=np.float32)
    for n, p in enumerate(per_sample):
        attention[n, :, : p.shape[1]] = p
    return ImageAttention(attention=attention, image_token_count=counts,
                          maps=attention.astype(np.float16) if keep_maps else None)


@contextlib.contextmanager
def evaluating(model):
    """Eval mode for the block; the model's train / eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batches(items, description: str, progress: bool):
    """``items`` (one per batch), behind a progress bar when asked for."""
    if progress:
        from tqdm.auto import tqdm

        return tqdm(items, desc=description, unit="batch")
    return items


def batch_starts(n: int, batch_size: int, description: str, progress: bool = False):
    return _batches(range(0, n, batch_size), description, progress)


def length_batches(lengths: Sequence[int], batch_size: int, description: str,
                   progress: bool = False) -> list[list[int]]:
    """Sample indices in batches of ``batch_size`` taken in order of ``lengths`` (stable): rows of
    similar length share a batch, so little of it is padding. Every pass here gives a batched
    row the numbers of the sample alone, so the order changes the cost, not the result."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return _batches([order[start:start + batch_size] for start in range(0, len(order), batch_size)],
                    description, progress)


def prefetched(batches: Iterable[list[int]], encode: Callable[[list[int]], dict]) -> Iterator[tuple[list[int], dict]]:
    """``(indices, encode(indices))`` per batch, the next batch encoded in a worker thread while
    the caller runs the current one (the processor works on the CPU while an accelerator runs
    the forward; on a CPU the two share the cores). Same results, in the same order."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for indices in batches:
            ahead = pool.submit(encode, indices)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (indices, ahead)
        if pending is not None:
            yield pending[0], pending[1].result()


def image_attention(model, processor, images: Sequence[Image.Image], questions: Sequence[str], *,
                    batch_size: int = 16, keep_maps: bool = False, progress: bool = False) -> ImageAttention:
    """BYE's attention profile for N (image, question) prompts.

    One prefill forward per batch (no generation, no KV cache; batches of similar question
    length, results in input order). For every sample and every
    language-model decoder layer: the attention of the last prompt position to the image-token
    keys (``input_ids == image_token_id``), averaged over heads, renormalised to sum to 1 over
    the image tokens. See :class:`ImageAttention` for shapes. The model's attention
    implementation and train/eval mode are restored afterwards.

    A layer whose mask hides every image token from the last position (a sliding-window layer
    shorter than the question) has nothing to renormalise: its row is all NaN, as the eager
    reference gives, and its entropy NaN.
    """
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    token_id = image_token_id(model, processor)
    parameters = _forward_parameters(model)
    per_sample: list[np.ndarray | None] = [None] * len(images)

    def encode(indices: list[int]) -> dict[str, torch.Tensor]:
        return encode_batch(processor, [images[i] for i in indices], [questions[i] for i in indices])

    with evaluating(model):
        # Batches of questions of similar length: the image part is the same size for a family.
        # One batch in flight: batch k's rows are read once batch k + 1 is queued (on an accelerator;
        # on the CPU the copy is the tensor itself).
        previous = None
        for indices, encoded in prefetched(length_batches([len(q) for q in questions], batch_size, "attention",
                                                          progress), encode):
            inputs = prepare_inputs(model, encoded, parameters)
            if "logits_to_keep" in parameters:
                inputs["logits_to_keep"] = 1
            _, rows = recorded_forward(model, inputs, host=False)
            if previous is not None:
                _keep_rows(per_sample, *previous, token_id)
            previous = (indices, HostCopy(rows), encoded["input_ids"])
        if previous is not None:
            _keep_rows(per_sample, *previous, token_id)
    return assemble(per_sample, keep_maps=keep_maps)


def _keep_rows(per_sample: list, indices: list[int], rows: HostCopy, input_ids: torch.Tensor, token_id: int) -> None:
    for i, row in zip(indices, image_rows(rows.get(), input_ids, token_id, indices)):
        per_sample[i] = row
