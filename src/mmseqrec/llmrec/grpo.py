"""MMSRARec stage 1 tuning: the keyword summariser trained with GRPO (TRL ``GRPOTrainer``) on
``R = alpha R_info + beta R_recon + gamma R_len`` (:mod:`.rewards`).

``mmseqrec enrich DATA --task item-keywords --tune grpo`` calls :func:`tune_for_enrich` before generating: the
prompts are exactly the ``item-keywords`` **text-view** prompts of the run (``mmsrarec/keywords-text``), a seeded
subset of ``items`` items with a text; each prompt gets ``num_generations`` sampled completions, scored by the
three reward terms, which TRL combines with ``reward_weights = [alpha, beta, gamma]`` (the weighted sum is the
reward; group-normalised advantages, as GRPO). LoRA (peft) on every linear layer; the tuned adapter is merged
and the model saved (safetensors) under ``DATA/enrich/models/item-keywords-grpo-<key>/`` with ``grpo.json``
(configuration, base model, per-step reward log, and the reward of the base and of the tuned model on
``eval_items`` **held-out** items: greedy keywords through the same ``transformers`` generation path as the
enrich run, :func:`heldout_reward`). The tuning and held-out items are seeded draws from the whole catalogue,
whatever ``--limit`` / ``--only`` select for generation, so one tuned model serves every generation run. The key hashes the base model's identity and the tuning
configuration: the same command reuses a finished model instead of training again, and a tuned model is never
overwritten. The enrich run then generates with the tuned model through the ``transformers`` backend.

Choices the paper leaves open (ours): phi = all-MiniLM-L6-v2 (the offline text encoder), the reconstruction
LM = the *untuned* base model (frozen), the reference text = ``"{title}. {text}"``, alpha/beta/gamma =
:class:`~.rewards.RewardWeights` defaults. Only the text view is tuned: the image view needs an
image-text-to-text summariser, and a text-only tuned model skips it (reason recorded by the runner).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ..config import Config
from ..errors import InputError, require
from ..fileio import atomic_dir
from .rewards import RewardWeights, reward_info, reward_len, reward_recon

__all__ = ["GRPOTuneConfig", "heldout_reward", "keyword_reward_funcs", "tune_for_enrich", "tune_keywords_grpo"]


class GRPOTuneConfig(Config):
    """GRPO tuning of the keyword summariser.

    Attributes
    ----------
    alpha, beta, gamma : weights of R_info, R_recon, R_len.
    steps : optimiser steps (``max_steps``).
    items : prompts (items with a text) in the seeded training subset.
    prompts_per_step : prompts per step; each gets ``num_generations`` completions.
    num_generations : the GRPO group size.
    max_completion_length : generated tokens per completion.
    temperature : sampling temperature of the completions.
    lr : AdamW learning rate of the LoRA weights.
    lora_r : LoRA rank (alpha = 2 r).
    kl_beta : TRL's KL coefficient (0 = no reference model, TRL's default).
    encoder : the sentence encoder phi of R_info (an :func:`mmseqrec.embed.encoders.load_encoder` name).
    eval_items : held-out items (none of the tuning items) whose greedy keywords are scored before and after.
    seed : item subset, LoRA init and sampling.
    """

    alpha: float = 1.0
    beta: float = 0.01
    gamma: float = 0.05
    steps: int = Field(20, ge=1)
    items: int = Field(64, ge=1)
    prompts_per_step: int = Field(2, ge=1)
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(48, ge=4)
    temperature: float = Field(1.0, gt=0)
    lr: float = Field(1e-4, gt=0)
    lora_r: int = Field(8, ge=1)
    kl_beta: float = Field(0.0, ge=0)
    encoder: str = "all-MiniLM-L6-v2"
    eval_items: int = Field(16, ge=0)
    seed: int = 0

    @property
    def weights(self) -> RewardWeights:
        return RewardWeights(self.alpha, self.beta, self.gamma)


def _text(completion: Any) -> str:
    """A TRL completion (conversational: ``[{"role": "assistant", "content": ...}]``, or a plain string)."""
    if isinstance(completion, str):
        return completion
    return str(completion[-1]["content"]) if completion else ""


def keyword_reward_funcs(embed: Callable[[list[str]], np.ndarray], recon_model, recon_tokenizer
                         ) -> list[Callable[..., list[float]]]:
    """The three reward terms as TRL reward functions ``f(prompts, completions, reference, **kw)``; the dataset
    column ``reference`` holds each prompt's item text. Combine them with ``reward_weights=[alpha, beta,
    gamma]``."""

    def r_info(prompts, completions, reference, **kw) -> list[float]:
        return reward_info([_text(c) for c in completions], list(reference), embed).tolist()

    def r_recon(prompts, completions, reference, **kw) -> list[float]:
        return reward_recon([_text(c) for c in completions], list(reference), recon_model, recon_tokenizer).tolist()

    def r_len(prompts, completions, **kw) -> list[float]:
        return reward_len([_text(c) for c in completions]).tolist()

    return [r_info, r_recon, r_len]


def heldout_reward(model_dir: str | Path, prompts: Sequence[str], references: Sequence[str], *, embed, recon_model,
                   recon_tokenizer, weights: RewardWeights, max_new_tokens: int, device: str = "cpu",
                   examples: int = 3) -> dict[str, Any]:
    """Greedy keywords of the model in ``model_dir`` for ``prompts`` (the ``transformers`` enrich backend: chat
    template, batched, left padding) and the mean reward terms against ``references``."""
    from ..enrich.backends import BackendConfig, Decoding
    from ..enrich.backends.base import GenRequest
    from ..enrich.backends.transformers_backend import TransformersBackend

    be = TransformersBackend(BackendConfig(backend="transformers", model=str(model_dir), device=device,
                                           decoding=Decoding(max_new_tokens=max_new_tokens, temperature=0.0)))
    kws = [r.text or "" for r in be.generate([GenRequest(p, max_new_tokens=max_new_tokens) for p in prompts])]
    info = reward_info(kws, list(references), embed)
    recon = reward_recon(kws, list(references), recon_model, recon_tokenizer)
    n_kw = reward_len(kws)
    total = weights.alpha * info + weights.beta * recon + weights.gamma * n_kw
    return {"n": len(kws), "reward": float(total.mean()), "r_info": float(info.mean()),
            "r_recon": float(recon.mean()), "r_len": float(n_kw.mean()),
            "chars": float(np.mean([len(k) for k in kws])), "examples": kws[:examples]}


def _trl():
    trl = require("trl", "llm", "GRPO tuning of the keyword summariser (--tune grpo)")
    return trl.GRPOConfig, trl.GRPOTrainer


def tune_keywords_grpo(model_dir: str | Path, prompts: Sequence[str], references: Sequence[str], out: str | Path,
                       cfg: GRPOTuneConfig, embed: Callable[[list[str]], np.ndarray] | None = None,
                       device: str = "cpu", heldout: tuple[Sequence[str], Sequence[str]] | None = None
                       ) -> dict[str, Any]:
    """GRPO-tune the causal LM in ``model_dir`` on ``prompts`` (one user turn each, the model's chat template)
    with the MMSRARec reward against ``references``; save the merged model + tokenizer + ``grpo.json`` into
    ``out`` (atomic, refused if it exists). ``heldout = (prompts, references)`` of items not tuned on: their
    reward with the base and the tuned model is recorded (``heldout.before`` / ``heldout.after``). Returns the
    ``grpo.json`` record."""
    import torch

    GRPOConfig, GRPOTrainer = _trl()
    peft = require("peft", "llm", "GRPO tuning of the keyword summariser")
    datasets = require("datasets", "llm", "GRPO tuning of the keyword summariser")
    from .run import load_lm

    if len(prompts) != len(references) or not prompts:
        raise InputError(f"GRPO needs prompts with reference texts, got {len(prompts)} prompts and "
                         f"{len(references)} texts", field="--tune")
    if embed is None:
        from ..embed.encoders import load_encoder

        enc = load_encoder(cfg.encoder, device=device)

        def embed(xs: list[str]) -> np.ndarray:
            return enc.encode_text(xs).numpy()

    torch.manual_seed(cfg.seed)
    policy, tok = load_lm(model_dir, device)
    recon, recon_tok = load_lm(model_dir, device)  # the frozen, untuned reconstruction LM
    recon.eval().requires_grad_(False)
    held: dict[str, Any] = {}
    if heldout is not None and len(heldout[0]):
        kw = {"embed": embed, "recon_model": recon, "recon_tokenizer": recon_tok, "weights": cfg.weights,
              "max_new_tokens": cfg.max_completion_length, "device": device}
        held["before"] = heldout_reward(model_dir, heldout[0], heldout[1], **kw)
    ds = datasets.Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts],
                                     "reference": list(references)})
    with tempfile.TemporaryDirectory(prefix="mmseqrec-grpo-") as scratch:
        args = GRPOConfig(
            output_dir=scratch, max_steps=cfg.steps, per_device_train_batch_size=cfg.prompts_per_step
            * cfg.num_generations, num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, learning_rate=cfg.lr,
            beta=cfg.kl_beta, reward_weights=[cfg.alpha, cfg.beta, cfg.gamma], seed=cfg.seed,
            use_cpu=device == "cpu", bf16=False, fp16=False, report_to="none", logging_steps=1,
            save_strategy="no", disable_tqdm=True)
        lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                               target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = GRPOTrainer(model=policy, reward_funcs=keyword_reward_funcs(embed, recon, recon_tok), args=args,
                              train_dataset=ds, processing_class=tok, peft_config=lora)
        trainer.train()
        log = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float))}
               for row in trainer.state.log_history if "reward" in row]
        merged = trainer.model.merge_and_unload()
    record = {"method": "GRPO (TRL GRPOTrainer), LoRA merged", "base_model": str(model_dir),
              "config": cfg.model_dump(), "n_prompts": len(prompts), "reward": "alpha R_info + beta R_recon + "
              "gamma R_len (MMSRARec stage 1)", "recon_model": "the untuned base model", "steps": log}
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if held:
            held["after"] = heldout_reward(tmp, heldout[0], heldout[1], **kw)
            record["heldout"] = {"greedy, max_new_tokens": cfg.max_completion_length, **held}
        (tmp / "grpo.json").write_text(json.dumps(record, indent=1))
    return record


def tune_for_enrich(data: str | Path, enrich_cfg, cfg: GRPOTuneConfig, *, device: str = "cpu"):
    """``--tune grpo`` of ``mmseqrec enrich``: tune (or reuse) the keyword summariser of ``enrich_cfg``'s backend
    on the dataset's text-view keyword prompts; returns ``(enrich config generating with the tuned model,
    tuned model directory, reused?)``."""
    from ..data.dataset import DatasetDir
    from ..enrich.tasks import TaskOptions, plan_task
    from .run import resolve_model

    if enrich_cfg.task != "item-keywords":
        raise InputError(f"--tune grpo tunes the MMSRARec keyword summariser: only with --task item-keywords, not "
                         f"{enrich_cfg.task!r}", field="--tune")
    be = enrich_cfg.backend
    if be.backend == "offline":
        base = resolve_model("smollm2")
    elif be.backend == "transformers" and be.model:
        base = resolve_model(be.model)
    else:
        raise InputError("--tune grpo trains a local model: use --backend offline (SmolLM2) or --backend "
                         "transformers --model DIR", field="--backend")
    ds = DatasetDir(data)
    jobs, _ = plan_task(ds, "item-keywords", TaskOptions())  # the whole catalogue (see the module docstring)
    steps = [j.make_step(0, None) for j in jobs if j.row.get("view") == "text" and not j.beyond_limit]
    steps = [s for s in steps if s.context.get("text") not in (None, "", "unknown") or s.context.get("title")]
    if not steps:
        raise InputError("no item with a title or text to tune the keyword summariser on", file=ds.path)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(steps))
    pick = np.sort(perm[:min(cfg.items, len(steps))])
    held = np.sort(perm[pick.size:pick.size + cfg.eval_items])

    def ref(i: int) -> str:
        return ". ".join(x for x in (steps[i].context.get("title"), steps[i].context.get("text")) if x and
                         x != "unknown")

    prompts = [steps[i].prompt for i in pick]
    refs = [ref(i) for i in pick]
    from ..enrich.backends.transformers_backend import _revision

    key = hashlib.sha256(json.dumps({"base": _revision(str(base), None), "cfg": cfg.model_dump(),
                                     "prompts": prompts, "refs": refs}, sort_keys=True).encode()).hexdigest()[:12]
    out = Path(ds.path) / "enrich" / "models" / f"item-keywords-grpo-{key}"
    reused = (out / "grpo.json").exists()
    if not reused:
        tune_keywords_grpo(base, prompts, refs, out, cfg, device=device,
                           heldout=([steps[i].prompt for i in held], [ref(i) for i in held]))
    tuned = enrich_cfg.model_copy(update={"backend": be.model_copy(update={"backend": "transformers",
                                                                           "model": str(out)})})
    return tuned, out, reused
