"""The embedded base model: a tiny LLaVA built, tokenised and pre-trained by the project.

The result is an ordinary Hugging Face checkpoint folder (``config.json``, safetensors
weights, a ``PreTrainedTokenizerFast`` with a chat template, a ``LlavaProcessor``) that
``AutoProcessor.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained`` load
like any published checkpoint. Nothing downstream knows it is tiny.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from bye.data.world import COLOURS, KNOWN_SKILLS, SHAPES, SKILLS, WorldConfig, generate

PAD, BOS, EOS, IMAGE = "<pad>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE]

# LLaVA-1.5 style: "USER: <image>\n{question}\nASSISTANT: {answer}</s>"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: {% elif message['role'] == 'assistant' %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the embedded model; every field is a knob in ``params.yaml`` (section ``base``)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    vision_intermediate: int = 256
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 512
    vocab_size: int = 640
    max_positions: int = 512
    vision_feature_layer: int = -1


PIXEL_TARGETS = ("pixels", "highpass")  # what the vision stage's pixel head rebuilds (:func:`pixel_target`)


@dataclass(frozen=True)
class PretrainSpec:
    """Two stages, as LLaVA itself is built: a vision encoder trained on its own, then captions."""

    n_images: int = 3000
    vision_epochs: float = 8
    vision_learning_rate: float = 2e-3
    vision_pixel_weight: float = 0.0  # > 0: the vision stage also rebuilds every patch's pixels from its feature
    vision_pixel_target: str = "pixels"  # pixels | highpass: the image minus its 3 x 3 local mean, scaled to unit variance
    vision_position_weight: float = 0.0  # > 0: the vision stage also names each cell's place (docs/embedded-world.md, "The colour-keyed lookups")
    epochs: float = 4
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    freeze_vision: bool = True
    vocabulary_share: float = 0.15  # corpus samples that are "repeat these tokens" requests
    # The skills stage (``pretrain_skills``), off unless steps are given (docs/embedded-world.md: measured, not adopted).
    skill_samples: int = 16000       # requests of the skills stage (fresh scenes)
    skill_phase_steps: int = 0       # steps per curriculum phase (one more skill each phase), e.g. 250
    skill_final_steps: int = 0       # then every skill together, e.g. 500
    skill_pick_two_steps: int = 0    # then two-option picks alone (skill pick_two; docs/embedded-world.md, "A longer skill stage")
    skill_pick_steps: int = 0        # then the lettered picks alone (docs/embedded-world.md, "The letter pick"), e.g. 1000
    skill_learning_rate: float = 1e-3
    skill_batch_size: int = 0        # 0: batch_size
    skill_length_groups: int = 1     # > 1: each batch runs as that many micro-batches of similar length (less padding, same gradient)
    # > 0: a curriculum phase runs skill_phase_steps, then goes on until its new skill's exact match on
    # held-out requests reaches this, checked every skill_check_every steps, for at most
    # skill_phase_max_steps in all (docs/embedded-world.md, "Phases that end on a bar")
    skill_phase_until: float = 0.0
    skill_phase_max_steps: int = 0   # 0: skill_phase_steps (no phase runs longer)
    skill_check_every: int = 15
    skill_check_samples: int = 64    # held-out requests per skill
    skills: tuple[str, ...] = SKILLS  # the curriculum's order; any of world.KNOWN_SKILLS
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "skills", tuple(self.skills))  # a YAML list
        unknown = [s for s in self.skills if s not in KNOWN_SKILLS]
        if unknown or len(set(self.skills)) != len(self.skills) or not self.skills:
            raise ValueError(f"skills must name distinct skills of {', '.join(KNOWN_SKILLS)}, got {list(self.skills)}")
        if self.skill_pick_steps and "pick_letter" not in self.skills:
            raise ValueError("skill_pick_steps needs pick_letter among the skills")
        if self.skill_pick_two_steps and "pick_two" not in self.skills:
            raise ValueError("skill_pick_two_steps needs pick_two among the skills")
        if self.skill_length_groups < 1:
            raise ValueError(f"skill_length_groups must be >= 1, got {self.skill_length_groups}")
        if not 0 <= self.skill_phase_until <= 1:
            raise ValueError(f"skill_phase_until is an exact-match share in [0, 1], got {self.skill_phase_until}")
        if self.skill_phase_max_steps and self.skill_phase_max_steps < self.skill_phase_steps:
            raise ValueError(f"skill_phase_max_steps ({self.skill_phase_max_steps}) is below skill_phase_steps "
                             f"({self.skill_phase_steps})")
        if self.skill_phase_until and (self.skill_check_every < 1 or self.skill_check_samples < 1):
            raise ValueError("skill_phase_until needs skill_check_every and skill_check_samples >= 1")
        if self.vision_pixel_target not in PIXEL_TARGETS:  # before minutes of building, not at the vision stage
            raise ValueError(f"vision_pixel_target must be one of {', '.join(PIXEL_TARGETS)}, "
                             f"got {self.vision_pixel_target!r}")

    @property
    def skill_phase_longest(self) -> int:
        """The most steps a curriculum phase may run."""
        return max(self.skill_phase_steps, self.skill_phase_max_steps if self.skill_phase_until else 0)

    @property
    def skill_steps(self) -> int:
        """The most steps of the skills stage (``skill_plan``'s length when no phase ends on a bar);
        0: no skills stage."""
        return (len(self.skills) * self.skill_phase_longest + self.skill_final_steps + self.skill_pick_two_steps
                + self.skill_pick_steps)


def tokenizer_corpus(seed: int, n: int = 2000) -> Iterable[str]:
    """Text of the world's language (prompts, questions, captions), used only to learn merges."""
    for task in ("caption", "vqa", "mcq"):
        for drawn in generate("corpus", n, seed=seed, task=task):
            yield f"USER: {drawn.sample.question}"
            yield f"ASSISTANT: {drawn.sample.answer}"
    yield " ".join(list(COLOURS) + list(SHAPES) + ["USER:", "ASSISTANT:", "Backdoor", "Attack!"])


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (no unknown token: any UTF-8 text encodes) with a chat template."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens={"image_token": IMAGE},
        model_max_length=512,
        padding_side="right",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # the CLIP class token, dropped by the "default" strategy
    )


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyLlavaSpec, *, seed: int) -> LlavaForConditionalGeneration:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_intermediate,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_heads,
        max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    n_image_tokens = (spec.image_size // spec.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=n_image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=spec.vision_feature_layer,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def spec_dict(spec) -> dict:
    return asdict(spec)


def pretraining_corpus(spec: PretrainSpec, world: WorldConfig):
    """The generic corpus: captioned scenes drawn apart from any submission's scenes."""
    return list(generate("corpus", spec.n_images, seed=spec.seed + 1000, task="caption", config=world))


def vocabulary_requests(tokenizer: PreTrainedTokenizerFast, n: int, *, seed: int, length: int = 8) -> list[tuple[str, str]]:
    """``n`` requests to repeat random runs of the tokenizer's own vocabulary.

    A real base model has produced every token of its vocabulary in pre-training; a model
    pre-trained only on scene text never has, and the output rows of the tokens it never
    produced stay at their random initialisation. Those tokens then cannot win a softmax, and a
    LoRA fine-tune, which leaves the embeddings alone, cannot teach them (measured: a full
    fine-tune with frozen embeddings stalled exactly where LoRA did, at the answer prior).
    Copying random token runs trains every row, the way an LLM's text pre-training does.
    """
    special = set(tokenizer.all_special_ids)
    pieces = {i: tokenizer.decode([i]) for i in range(len(tokenizer)) if i not in special}
    pool = np.array([i for i, piece in pieces.items() if piece.isprintable() and "\ufffd" not in piece])
    rng = np.random.default_rng([seed, 11])
    requests = []
    for _ in range(n):
        text = tokenizer.decode(rng.choice(pool, size=length).tolist()).strip()
        requests.append((f"Repeat after me: {text}", text))
    return requests


def _cell_targets(objects) -> list[list[int]]:
    """Per grid cell: (colour, shape, size) class indices, 0 meaning an empty cell."""
    colours, shapes = list(COLOURS), list(SHAPES)
    targets = [[0, 0, 0] for _ in range(9)]
    for obj in objects:
        targets[obj.cell] = [colours.index(obj.colour) + 1, shapes.index(obj.shape) + 1,
                             1 + (obj.size == "large")]
    return targets


def patch_pixels(pixel_values: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, patches, 3 * patch * patch), patches in the row-major order of the
    tower's patch embedding."""
    b, c = pixel_values.shape[:2]
    tiles = pixel_values.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, rows, cols, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, tiles.shape[2] * tiles.shape[3], c * patch * patch)


def pixel_target(pixel_values: torch.Tensor, patch: int, kind: str) -> torch.Tensor:
    """What the vision stage's pixel head rebuilds, per patch (:func:`patch_pixels`): the pixels themselves, or
    their high-pass residual (the image minus its 3 x 3 local mean) at unit variance, where small, fine patterns
    (a blended noise pattern, a frequency-domain trigger) weigh as much as an object's edges."""
    if kind == "pixels":
        return patch_pixels(pixel_values, patch)
    if kind == "highpass":
        local = torch.nn.functional.avg_pool2d(pixel_values, 3, stride=1, padding=1, count_include_pad=False)
        residual = pixel_values - local
        return patch_pixels(residual / residual.std().clamp_min(1e-3), patch)  # a flat image stays ~0
    raise ValueError(f"vision_pixel_target must be one of {', '.join(PIXEL_TARGETS)}, got {kind!r}")


def pretrain_vision(model: LlavaForConditionalGeneration, pixel_values: torch.Tensor, objects: list,
                    spec: PretrainSpec, *, progress: bool = True) -> list[float]:
    """Stage 0: train the vision tower alone to name what sits in each cell of the scene grid.

    A CLIP tower trained only through a language model's caption loss learns too slowly at this
    scale (measured: the captioner ignored the image entirely). A supervised probe on the
    tower's patch features, pooled to the 3 x 3 grid, gives it discriminative features first.
    The probe heads are thrown away; only the tower keeps what it learned.
    """
    from tqdm.auto import tqdm

    tower = model.model.vision_tower
    hidden = tower.config.hidden_size
    heads = torch.nn.Linear(hidden, len(COLOURS) + 1 + len(SHAPES) + 1 + 3)
    targets = torch.tensor([_cell_targets(o) for o in objects])  # (N, 9, 3)
    patch = tower.config.patch_size
    pixel_head = torch.nn.Linear(hidden, 3 * patch * patch) if spec.vision_pixel_weight else None
    place_head = torch.nn.Linear(hidden, 9) if spec.vision_position_weight else None
    params = list(tower.parameters()) + list(heads.parameters())
    for extra in (pixel_head, place_head):
        params += list(extra.parameters()) if extra is not None else []
    optimizer = torch.optim.AdamW(params, lr=spec.vision_learning_rate, weight_decay=spec.weight_decay)
    n = len(pixel_values)
    steps = max(1, round(spec.vision_epochs * n / spec.batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, spec.vision_learning_rate, total_steps=steps,
                                                    pct_start=spec.warmup_ratio or 0.05)
    generator = torch.Generator().manual_seed(spec.seed)
    layer = model.config.vision_feature_layer
    splits = [len(COLOURS) + 1, len(SHAPES) + 1, 3]
    losses, pixel_losses, place_losses = [], [], []
    tower.train()
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for _ in tqdm(range(steps), desc="pre-train vision", disable=not progress):
        if cursor + spec.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + spec.batch_size]
        cursor += spec.batch_size
        states = tower(pixel_values[index], output_hidden_states=True).hidden_states[layer][:, 1:]
        side = int(states.shape[1] ** 0.5)
        grid = states.transpose(1, 2).reshape(len(index), hidden, side, side)
        cells = torch.nn.functional.adaptive_avg_pool2d(grid, 3).flatten(2).transpose(1, 2)  # (B, 9, H)
        logits = heads(cells).split(splits, dim=-1)
        loss = sum(torch.nn.functional.cross_entropy(l.reshape(-1, l.shape[-1]), targets[index][..., k].reshape(-1))
                   for k, l in enumerate(logits))
        if place_head is not None:  # keep where each cell is: the probe above is the same at every place
            place_error = torch.nn.functional.cross_entropy(place_head(cells).reshape(-1, 9),
                                                            torch.arange(9).repeat(len(index)))
            loss = loss + spec.vision_position_weight * place_error
            place_losses.append(float(place_error.detach()))
        if pixel_head is not None:  # keep what is not an object (a trigger, a texture) in the patch features
            error = torch.nn.functional.mse_loss(pixel_head(states),
                                                 pixel_target(pixel_values[index], patch, spec.vision_pixel_target))
            loss = loss + spec.vision_pixel_weight * error
            pixel_losses.append(float(error.detach()))
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        hits = torch.stack([(l.argmax(-1) == targets[index][..., k]).float().mean() for k, l in enumerate(logits)])
        accuracy = hits if not losses[:-1] else 0.9 * accuracy + 0.1 * hits
    tower.eval()
    return {"losses": losses, "pixel_losses": pixel_losses, "place_losses": place_losses,
            "cell_accuracy": dict(zip(("colour", "shape", "size"), accuracy.tolist()))}


@dataclass(frozen=True)
class SkillPhase:
    allowed: np.ndarray      # the sample indices its steps draw from
    steps: int               # the most steps it runs
    until: str | None = None  # the skill whose held-out exact match may end it sooner


def skill_phases(kinds: list[str], spec: PretrainSpec) -> list[SkillPhase]:
    """The skills stage's curriculum. Phase k holds the first k + 1 skills of ``spec.skills``
    (cumulative, so no skill is forgotten while the next forms) and, with ``skill_phase_until``, may
    end once its new skill passes the bar; then a phase holds them all, then one the two-option
    picks alone, then one the lettered picks alone."""
    watch = spec.skill_phase_until > 0
    phases = [SkillPhase(np.flatnonzero(np.isin(kinds, spec.skills[:k + 1])), spec.skill_phase_longest,
                         spec.skills[k] if watch else None) for k in range(len(spec.skills))]
    phases.append(SkillPhase(np.arange(len(kinds)), spec.skill_final_steps))
    alone = {skill: np.flatnonzero(np.asarray(kinds) == skill) for skill in ("pick_two", "pick_letter")}
    return phases + [SkillPhase(alone["pick_two"], spec.skill_pick_two_steps),
                     SkillPhase(alone["pick_letter"], spec.skill_pick_steps)]


def skill_plan(kinds: list[str], spec: PretrainSpec) -> list[np.ndarray]:
    """For every step of the skills stage, the indices it may draw from, every phase run in full."""
    return [phase.allowed for phase in skill_phases(kinds, spec) for _ in range(phase.steps)]


def frozen_image_features(model: LlavaForConditionalGeneration, encoded: list, chunk: int = 256) -> torch.Tensor:
    """The vision tower's selected features (the projector's input) of every encoded sample,
    computed once: (N, image tokens, vision hidden). The model's own feature selection, with the
    projector left out for the call."""
    projector = model.model.multi_modal_projector
    model.model.multi_modal_projector = torch.nn.Identity()
    try:
        with torch.no_grad():
            return torch.cat([torch.stack(model.model.get_image_features(
                pixel_values=torch.cat([e.vision["pixel_values"] for e in encoded[i:i + chunk]]),
                vision_feature_layer=model.config.vision_feature_layer,
                vision_feature_select_strategy=model.config.vision_feature_select_strategy).pooler_output)
                for i in range(0, len(encoded), chunk)])
    finally:
        model.model.multi_modal_projector = projector


def embed_with_images(model: LlavaForConditionalGeneration, input_ids: torch.Tensor, projected: torch.Tensor):
    """The input embeddings of ``input_ids`` with the image-token positions filled, in order, by
    ``projected`` (B, image tokens, hidden): what the model's forward does with pixel values."""
    inputs = model.get_input_embeddings()(input_ids)
    image = input_ids == model.config.image_token_index
    return inputs.masked_scatter(image[..., None], projected.to(inputs.dtype))


def grouped_loss(model, image_embeddings, encoded: list, index: np.ndarray, groups: int, pad_token_id: int) -> torch.Tensor:
    """The mean answer-token loss of the batch ``encoded[index]``, computed as ``groups``
    micro-batches of similar length whose gradients add up to the one padded batch's: a batch
    mixing short requests and long lettered picks is otherwise mostly padding. The micro-batches
    but the last are back-propagated here; the returned loss (the whole batch's) carries the last
    one's graph, so that ``loss.backward()`` completes the gradient."""
    from bye.models.chat import IGNORE_INDEX, collate

    if groups == 1:  # the one padded batch, rows as drawn, its loss the mean over its answer tokens
        parts, split = [index], {}
    else:  # each part's loss: its answer tokens' sum over the whole batch's count
        order = index[np.argsort([len(encoded[i].input_ids) for i in index], kind="stable")]
        parts = [part for part in np.array_split(order, groups) if len(part)]
        split = {"num_items_in_batch": sum(int((encoded[i].labels[1:] != IGNORE_INDEX).sum()) for i in index)}
    total = torch.zeros(())
    for k, part in enumerate(parts):
        batch = collate([encoded[i] for i in part], pad_token_id)
        inputs = embed_with_images(model, batch["input_ids"], image_embeddings(part))
        loss = model(inputs_embeds=inputs, attention_mask=batch["attention_mask"], labels=batch["labels"], **split).loss
        if k < len(parts) - 1:
            loss.backward()
            loss = loss.detach()
        total = total + loss
    return total


def held_out_exact_match(model, projected: torch.Tensor, encoded: list, pad_token_id: int) -> float:
    """The share of ``encoded`` whose whole answer (its end of turn included) the model predicts
    token by token from the answer so far: greedy decoding's exact match, in one teacher-forced
    pass. ``projected``: their image tokens as the projector gives them."""
    from bye.models.chat import IGNORE_INDEX, collate

    batch = collate(encoded, pad_token_id)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(inputs_embeds=embed_with_images(model, batch["input_ids"], projected),
                       attention_mask=batch["attention_mask"]).logits
    model.train(was_training)
    targets = batch["labels"][:, 1:]
    right = (logits[:, :-1].argmax(-1) == targets) | (targets == IGNORE_INDEX)
    return float(right.all(-1).float().mean())


def pretrain_skills(model: LlavaForConditionalGeneration, encoded: list, kinds: list[str], spec: PretrainSpec,
                    *, pad_token_id: int, held_out: dict[str, list] | None = None, progress: bool = True) -> dict:
    """Last stage: the visual skills an instruction-tuned base brings, one added per phase.

    Measured (docs/embedded-world.md, "It is a multi-task plateau"): a language model trained on all of these requests
    at once stays at their answer priors for thousands of steps (a 4-layer model on 96,000
    fresh samples: 41 % exact), while each skill alone forms in ~200 steps and is kept when the
    next one is added. The vision tower stays frozen. With ``spec.skill_phase_until``, ``held_out``
    (skill -> encoded requests) decides when a phase has formed its skill; the learning-rate schedule
    is laid over every phase's most steps, and a phase that ends sooner skips the rest of its part.
    """
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from bye.models.training import optimizer_step

    phases = skill_phases(kinds, spec)
    total = sum(phase.steps for phase in phases)
    features = frozen_image_features(model, encoded)  # the tower is frozen; the projector still trains
    checks = {skill: (samples, frozen_image_features(model, samples)) for skill, samples in (held_out or {}).items()}
    missing = {phase.until for phase in phases if phase.until} - set(checks)
    if missing:
        raise ValueError(f"skill_phase_until needs held-out requests of {sorted(missing)}")
    projector = model.model.multi_modal_projector
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.skill_learning_rate, weight_decay=spec.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(spec.warmup_ratio * total), total)
    rng = np.random.default_rng([spec.seed, 14])
    losses, watched = [], []
    model.train()
    with tqdm(total=total, desc="pre-train skills", disable=not progress) as bar:
        for phase in phases:
            ran, score = 0, None
            while ran < phase.steps:
                index = phase.allowed[rng.choice(len(phase.allowed), replace=False,
                                                 size=min(spec.skill_batch_size or spec.batch_size, len(phase.allowed)))]
                loss = grouped_loss(model, lambda part: projector(features[torch.as_tensor(part)]), encoded, index,
                                    spec.skill_length_groups, pad_token_id)
                losses.append(optimizer_step(loss, params, optimizer, scheduler))
                ran += 1
                bar.update()
                if phase.until and ran >= spec.skill_phase_steps and \
                        (ran - spec.skill_phase_steps) % spec.skill_check_every == 0:
                    samples, check_features = checks[phase.until]
                    score = held_out_exact_match(model, projector(check_features), samples, pad_token_id)
                    if score >= spec.skill_phase_until:
                        break
            for _ in range(phase.steps - ran):  # the part of the schedule this phase did not need
                scheduler.step()
            bar.update(phase.steps - ran)
            if phase.until:
                watched.append({"skill": phase.until, "steps": ran, "exact_match": score})
    model.eval()
    return {"steps": len(losses), "losses": [losses[0], losses[-1]], "phases": watched}


def held_out_requests(processor, pretrain: PretrainSpec, world: WorldConfig) -> dict[str, list]:
    """``pretrain.skill_check_samples`` encoded requests of every skill, from scenes of their own."""
    from bye.models.chat import encode_for_training

    wanted = {skill: [] for skill in pretrain.skills}
    for drawn in generate("corpus", 100 * pretrain.skill_check_samples * len(wanted), seed=pretrain.seed + 3000,
                          task="skills", config=world, skills=pretrain.skills):
        if len(wanted[drawn.kind]) < pretrain.skill_check_samples:
            wanted[drawn.kind].append(encode_for_training(processor, drawn.image, drawn.sample.question,
                                                          drawn.sample.answer))
        if all(len(v) == pretrain.skill_check_samples for v in wanted.values()):
            break
    unposed = sorted(skill for skill, samples in wanted.items() if not samples)
    if unposed:
        raise ValueError(f"no scene of the world poses {unposed}: a phase cannot wait for a skill it cannot check")
    return wanted


def build_base(model_dir, spec: TinyLlavaSpec = TinyLlavaSpec(), pretrain: PretrainSpec = PretrainSpec(),
               world: WorldConfig = WorldConfig(), *, progress: bool = True) -> dict:
    """Train the tokenizer, build the model, pre-train it on captions, save a checkpoint folder.

    Returns a summary (sizes, losses, timings) that the caller may log.
    """
    import time

    from tqdm.auto import tqdm

    from bye.io import atomic_directory, atomic_write_json, reproducible
    from bye.models.chat import encode_for_training
    from bye.models.training import TrainConfig, train

    began = time.perf_counter()
    tokenizer = train_tokenizer(tokenizer_corpus(pretrain.seed), spec.vocab_size)
    processor = build_processor(tokenizer, spec)
    model = build_model(tokenizer, spec, seed=pretrain.seed)
    corpus = pretraining_corpus(pretrain, world)
    texts = [(d.sample.question, d.sample.answer) for d in corpus]
    copies = vocabulary_requests(tokenizer, round(pretrain.vocabulary_share * len(corpus)), seed=pretrain.seed)
    for index, request in zip(np.random.default_rng([pretrain.seed, 12]).permutation(len(corpus)), copies):
        texts[index] = request  # the scene still trains the vision stage; the text is the copy request
    encoded = [encode_for_training(processor, d.image, question, answer)
               for d, (question, answer) in tqdm(list(zip(corpus, texts)), desc="encode corpus", disable=not progress)]
    torch.manual_seed(pretrain.seed)
    vision_began = time.perf_counter()
    pixel_values = torch.cat([e.vision["pixel_values"] for e in encoded])
    vision = pretrain_vision(model, pixel_values, [d.objects for d in corpus], pretrain, progress=progress)
    vision_seconds = time.perf_counter() - vision_began
    if pretrain.freeze_vision:  # LLaVA's recipe: the captioning stage leaves the vision tower as it is
        model.model.vision_tower.requires_grad_(False)
    config = TrainConfig(epochs=pretrain.epochs, batch_size=pretrain.batch_size,
                         learning_rate=pretrain.learning_rate, weight_decay=pretrain.weight_decay,
                         warmup_ratio=pretrain.warmup_ratio, seed=pretrain.seed, checkpoint_every=0)
    result = train(model, encoded, config, pad_token_id=tokenizer.pad_token_id, progress=progress,
                   description="pre-train base")
    skills_began = time.perf_counter()
    skills = {"steps": 0, "losses": []}
    if pretrain.skill_steps:
        drawn = list(generate("corpus", pretrain.skill_samples, seed=pretrain.seed + 2000, task="skills", config=world,
                              skills=pretrain.skills))
        skills = pretrain_skills(model, [encode_for_training(processor, d.image, d.sample.question, d.sample.answer)
                                         for d in tqdm(drawn, desc="encode skills", disable=not progress)],
                                 [d.kind for d in drawn], pretrain, pad_token_id=tokenizer.pad_token_id,
                                 held_out=held_out_requests(processor, pretrain, world)
                                 if pretrain.skill_phase_until else None, progress=progress)
    skills_seconds = time.perf_counter() - skills_began
    model.requires_grad_(True)
    summary = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vision_losses": [vision["losses"][0], vision["losses"][-1]],
        "vision_cell_accuracy": vision["cell_accuracy"],
        "vision_seconds": vision_seconds,
        "vocab_size": len(tokenizer),
        "image_tokens": (spec.image_size // spec.patch_size) ** 2,
        "corpus_samples": len(corpus),
        "epoch_losses": result.epoch_losses,
        "train_seconds": result.seconds,
        "skill_steps": skills["steps"],
        "skill_losses": skills["losses"],
        "skill_phases": skills.get("phases", []),
        "skill_seconds": skills_seconds,
        "samples_per_second": result.samples_per_second,
        "total_seconds": time.perf_counter() - began,
        "spec": asdict(spec),
        "pretrain": asdict(pretrain),
    }
    with atomic_directory(model_dir) as tmp:
        model.save_pretrained(tmp)  # safetensors by default
        processor.save_pretrained(tmp)
        atomic_write_json(tmp / "pretraining.json", reproducible(summary))
    return summary
