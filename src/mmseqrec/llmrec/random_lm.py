"""A randomly initialised Llama (or Qwen2) causal LM with a chat template, built from a config and saved like a hub
checkpoint, so the yes/no scorer and the LoRA SFT are exercised through ``from_pretrained(dir)`` with no
download (tests; the GPU path of ``benchmarks/llmrec_speed.py``). Character-level tokenizer and chat template
of :mod:`mmseqrec.enrich.random_vlm`; its outputs are meaningless by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

__all__ = ["build_random_lm"]

#: hidden, intermediate, layers, heads, kv heads, vocabulary padding
_SIZES = {"tiny": (32, 64, 2, 4, 2, 0), "2b": (1536, 8960, 28, 12, 2, 151_000)}


def build_random_lm(out_dir: str | Path, *, size: Literal["tiny", "2b"] = "tiny", arch: Literal["llama", "qwen2"]
                    = "llama", seed: int = 0) -> Path:
    """Build, randomly initialise and ``save_pretrained`` a ``LlamaForCausalLM`` (or ``Qwen2ForCausalLM``) +
    tokenizer into ``out_dir``."""
    import torch
    import transformers as tr

    from ..enrich.random_vlm import _CHAT, _tokenizer

    h, i, n_layers, heads, kv, pad = _SIZES[size]
    tok, vocab = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], pad)
    tok.chat_template = _CHAT.replace("IMAGE_SLOT", "")
    torch.manual_seed(seed)
    cls = {"llama": (tr.LlamaConfig, tr.LlamaForCausalLM), "qwen2": (tr.Qwen2Config, tr.Qwen2ForCausalLM)}[arch]
    cfg = cls[0](vocab_size=len(vocab), hidden_size=h, intermediate_size=i, num_hidden_layers=n_layers,
                         num_attention_heads=heads, num_key_value_heads=kv, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, max_position_embeddings=4096)
    model = cls[1](cfg)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 2
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
