"""Tiny image-text models of six families that transformers ships, built from configs with random
weights (nothing is downloaded): LLaVA (the embedded builder), Qwen2-VL (multimodal RoPE,
grouped-query attention, an image-token count that depends on the image size), Gemma3 (SigLIP,
q/k norms, sliding-window layers, a bidirectional mask over image tokens, and a processor that
wants one list of images per prompt), LLaVA-NeXT, InternVL and Idefics3 (each image cut into a
number of crops that depends on its shape). Each comes with its own processor and chat template."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, ProcessorMixin

QUESTIONS = ["What colour is the circle?", "How many shapes are there in the picture?", "Is there a square?",
             "Describe it."]

def images_of(widths: list[int], height: int = 32) -> list[Image.Image]:
    """Random RGB images with a bright block so that patches differ."""
    images = []
    for seed, width in enumerate(widths):
        pixels = np.random.RandomState(seed).randint(0, 120, (height, width, 3)).astype(np.uint8)
        pixels[4 + 2 * seed: 12 + 2 * seed, 6:14] = 255
        images.append(Image.fromarray(pixels))
    return images


def family_tokenizer(special: list[str], extra: dict[str, str], template: str, **named) -> PreTrainedTokenizerFast:
    """A byte-level BPE like bye.models.tiny.train_tokenizer, with a family's special tokens."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([q.lower() + " user assistant model" for q in QUESTIONS] * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, extra_special_tokens=extra, **named)
    tokenizer.chat_template = template
    return tokenizer


def text_config(tokenizer, model_type: str, **extra) -> dict:
    """A 3-layer, 64-wide language model with grouped-query attention, for ``tokenizer``."""
    return dict(model_type=model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, **extra)


def build_llava():
    from bye.models.tiny import TinyLlavaSpec, build_model, build_processor, tokenizer_corpus, train_tokenizer

    spec = TinyLlavaSpec(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2,
                         vision_intermediate=64, text_hidden=64, text_layers=3, text_heads=4,
                         text_intermediate=128, vocab_size=320)
    tokenizer = train_tokenizer(tokenizer_corpus(0, n=40), spec.vocab_size)
    model = build_model(tokenizer, spec, seed=0)
    return model, build_processor(tokenizer, spec)


QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen2_vl():
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video processor, which needs torchvision (not installed)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = tokenizer.image_token, tokenizer.video_token
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|image_pad|>", "<|video_pad|>"]
    tokenizer = family_tokenizer(special, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
                                 QWEN_TEMPLATE, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    # 4 px patches merged 2 x 2: a 32 x 32 image gives 16 image tokens, 32 x 48 gives 24.
    image_processor = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                          chat_template=QWEN_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    return Qwen2VLForConditionalGeneration(config), processor


GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def build_gemma3(sliding_window: int = 512):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    special = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
               "<image_soft_token>"]
    tokenizer = family_tokenizer(special, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                           "image_token": "<image_soft_token>"}, GEMMA_TEMPLATE,
                                 pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, chat_template=GEMMA_TEMPLATE, image_seq_length=16)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in special}
    config = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=4),
        # query_pre_attn_scalar < head_dim sharpens attention (scale = 1/sqrt(scalar)), and layer 0
        # and 2 are sliding-window layers.
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=1,
                         sliding_window=sliding_window, sliding_window_pattern=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        mm_tokens_per_image=16, boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(0)
    return Gemma3ForConditionalGeneration(config), processor


LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_llava_next():
    """LLaVA-NeXT (LLaVA-1.6): any-resolution images, a base tile plus one 16 px crop per grid cell of
    the best-fitting pinpoint, so a batch's samples have different numbers of crops and of image tokens."""
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    special = ["<pad>", "<s>", "</s>", "<image>"]
    tokenizer = family_tokenizer(special, {"image_token": "<image>"}, LLAVA_NEXT_TEMPLATE,
                                 pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=4,
                                   num_additional_image_tokens=1,  # the CLS token, which "default" drops
                                   vision_feature_select_strategy="default", chat_template=LLAVA_NEXT_TEMPLATE)
    config = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=16, patch_size=4),
        text_config=text_config(tokenizer, "llama", bos_token_id=tokenizer.bos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(config), processor


INTERNVL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_internvl():
    """InternVL (InternViT + Qwen2, pixel-shuffle projector): each image cut into up to four 16 px crops
    plus a thumbnail, all crops of a batch on one axis, 4 image tokens per crop."""
    import re

    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
    )

    class ImageOnlyInternVLProcessor(InternVLProcessor):
        """InternVLProcessor without its video processor, which needs torchvision (not installed)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length=4, **kwargs):
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
            self.image_seq_length = image_seq_length
            self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
            self.start_image_token_id = tokenizer.start_image_token_id
            self.end_image_token_id = tokenizer.end_image_token_id
            self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
            self.image_token_id = tokenizer.context_image_token_id
            self.multimodal_pattern = re.compile(
                f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})")

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = family_tokenizer(special, {"start_image_token": "<img>", "end_image_token": "</img>",
                                           "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
                                 INTERNVL_TEMPLATE, pad_token="<|endoftext|>", eos_token="<|im_end|>")
    image_processor = GotOcr2ImageProcessorPil(size={"height": 16, "width": 16}, crop_to_patches=True,
                                               min_patches=1, max_patches=4)
    processor = ImageOnlyInternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                           chat_template=INTERNVL_TEMPLATE)
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=[16, 16], patch_size=[4, 4]),
        text_config=text_config(tokenizer, "qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), downsample_ratio=0.5,
    )
    torch.manual_seed(0)
    return InternVLForConditionalGeneration(config), processor


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_idefics3():
    """Idefics3 (SmolVLM's architecture): each image split into 16 px tiles plus a global view, each
    tile's 4 image tokens framed by row/column tokens, and a pixel mask per tile."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
               "<global-img>", *[f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]]
    tokenizer = family_tokenizer(special, {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                                           "global_image_token": "<global-img>"}, IDEFICS3_TEMPLATE,
                                 pad_token="<|endoftext|>", eos_token="<end_of_utterance>", bos_token="<|im_start|>")
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 32}, max_image_size={"longest_edge": 16},
                                                do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_TEMPLATE)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
        text_config=text_config(tokenizer, "llama"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
    )
    torch.manual_seed(0)
    return Idefics3ForConditionalGeneration(config), processor
