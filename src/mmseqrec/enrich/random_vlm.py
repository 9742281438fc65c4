"""Randomly initialised image-text-to-text models built from a config, saved like a hub checkpoint.

Used by the tests (a tiny model, seconds on a CPU) and by ``benchmarks/enrich_speed.py`` (a Qwen2-VL-2B-shaped
model), so that the ``transformers`` backend is exercised through the same ``from_pretrained(dir)`` path users
take, with no download. The tokenizer is a character-level ``tokenizers`` WordLevel model wrapped as
``PreTrainedTokenizerFast``; its outputs are meaningless by construction. Not for anything but testing/timing.

Architectures: ``llava`` (CLIP vision tower + Llama text model; needs only Pillow for its image processor) and
``qwen2-vl`` (needs ``torchvision`` for the Qwen2-VL processor's video component).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["SIZES", "build_random_vlm"]

_CHAT = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE_SLOT{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: text (hidden, intermediate, layers, heads, kv heads), vision (hidden, layers, heads), image side in pixels
SIZES = {
    "tiny": {"text": (32, 64, 1, 2, 1), "vision": (32, 1, 2), "image": 28, "vocab_pad": 0},
    # Qwen2-VL-2B: text 1536/8960/28 layers/12 heads/2 kv; vision 1280 wide, 32 layers, 16 heads; 151k vocab
    "2b": {"text": (1536, 8960, 28, 12, 2), "vision": (1280, 32, 16), "image": 336, "vocab_pad": 151_000},
}


def _tokenizer(special: list[str], vocab_pad: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(special)}
    for ch in [chr(c) for c in range(32, 127)] + ["\n"]:
        vocab.setdefault(ch, len(vocab))
    for k in range(vocab_pad):  # realistic vocabulary size (embedding / LM-head cost) without real merges
        vocab[f"<|x{k}|>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token=special[0]))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token=special[0],
                                  unk_token=special[0], additional_special_tokens=special[1:])
    return tok, vocab


def build_random_vlm(out_dir: str | Path, *, arch: Literal["llava", "qwen2-vl"] = "llava",
                     size: Literal["tiny", "2b"] = "tiny", seed: int = 0) -> Path:
    """Build, randomly initialise and ``save_pretrained`` a model + processor into ``out_dir``."""
    import torch
    import transformers as tr

    s = SIZES[size]
    th, ti, tl, tn, tkv = s["text"]
    vh, vl, vn = s["vision"]
    out = Path(out_dir)
    torch.manual_seed(seed)
    if arch == "llava":
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
        tok, vocab = _tokenizer(special, s["vocab_pad"])
        from transformers.models.clip import CLIPImageProcessorPil

        side = s["image"]
        ip = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        proc = tr.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14,
                                 vision_feature_select_strategy="default",
                                 chat_template=_CHAT.replace("IMAGE_SLOT", "<image>\n"), image_token="<image>",
                                 num_additional_image_tokens=1)
        cfg = tr.LlavaConfig(
            vision_config=tr.CLIPVisionConfig(hidden_size=vh, intermediate_size=4 * vh, num_hidden_layers=vl,
                                              num_attention_heads=vn, image_size=side, patch_size=14,
                                              projection_dim=vh),
            text_config=tr.LlamaConfig(vocab_size=len(vocab), hidden_size=th, intermediate_size=ti,
                                       num_hidden_layers=tl, num_attention_heads=tn, num_key_value_heads=tkv,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0,
                                       max_position_embeddings=4096),
            image_token_id=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
        model = tr.LlavaForConditionalGeneration(cfg)
    elif arch == "qwen2-vl":
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|image_pad|>", "<|video_pad|>"]
        tok, vocab = _tokenizer(special, s["vocab_pad"])
        from transformers.models.qwen2_vl import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        side = s["image"]
        ip = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=side * side)
        proc = tr.Qwen2VLProcessor(image_processor=ip, tokenizer=tok, video_processor=Qwen2VLVideoProcessor(),
                                   chat_template=_CHAT.replace("IMAGE_SLOT",
                                                               "<|vision_start|><|image_pad|><|vision_end|>"))
        head = th // tn
        sec = [head // 8, head // 8 * 3 // 2, 0]
        sec[2] = head // 2 - sec[0] - sec[1]
        cfg = tr.Qwen2VLConfig(
            vision_config={"depth": vl, "embed_dim": vh, "hidden_size": th, "num_heads": vn, "mlp_ratio": 4,
                           "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
            text_config={"vocab_size": len(vocab), "hidden_size": th, "intermediate_size": ti,
                         "num_hidden_layers": tl, "num_attention_heads": tn, "num_key_value_heads": tkv,
                         "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 0,
                         "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": sec}},
            image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
            vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"])
        model = tr.Qwen2VLForConditionalGeneration(cfg)
    else:
        raise ValueError(f"unknown arch {arch!r}")
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
