"""MLLM-MSR (and MMSRARec's prompt + multi-task SFT, :mod:`.mmsrarec`) as a run: LoRA SFT (peft) on the yes/no
prompt, then yes/no scoring of the candidate file's valid and
test lists, written with the run-directory contract of ``mmseqrec train`` so ``compare`` pairs it with
sequential runs scored on the same file (``mmseqrec evaluate RUN --protocol candidates:file=FILE``).

Run directory::

    RUN/config.yaml         the resolved :class:`LLMRecConfig` + the candidate file's sha256 + the prompt sources
    RUN/adapter/            peft adapter (adapter_model.safetensors + adapter_config.json)
    RUN/log.jsonl           one line per epoch (mean SFT loss)
    RUN/metrics.json        protocol candidates:file=PATH, valid + test metrics, seed, dataset identity
    RUN/ranks.parquet       test ranks (user, target, rank, tied); RUN/ranks-valid.parquet likewise

Training pairs are 1 positive : 1 negative per training user (the negative drawn, per epoch and seeded, from
that user's list of never-interacted items); the loss is on the answer tokens only.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import ConfigDict, Field

from ..config import Config
from ..data.dataset import DatasetDir
from ..data.split import EvalSet, leave_one_out
from ..errors import InputError, require
from ..evaluate.candidates import read_candidates
from ..evaluate.evaluator import RankingResult, evaluate_ranking
from ..fileio import atomic_dir, atomic_write_json, atomic_write_text
from .candidates import read_candidate_set
from .prompts import PromptTexts, load_prompt_texts
from .scoring import YesNoScorer, answer_loss, collate_sft, encode_sft

__all__ = ["Backbone", "ItemImages", "LLMRecConfig", "Prompter", "evaluate_llmrec", "load_lm", "resolve_model",
           "train_llmrec"]

CONFIG, ADAPTER, LOG, METRICS, RANKS = "config.yaml", "adapter", "log.jsonl", "metrics.json", "ranks.parquet"


class LLMRecConfig(Config):
    """An LLM-recommender run (``mmseqrec llmrec train``).

    Attributes
    ----------
    method : {"mllm-msr", "mmsrarec"}
    data, candidates : str
        Prepared dataset directory and candidate file (``mmseqrec llmrec candidates``).
    model : str
        A local transformers directory, or ``smollm2`` (the offline SmolLM2-135M-Instruct).
    lora_r, lora_alpha, lora_dropout : LoRA on every linear layer of the language model.
    lr, epochs, batch_size, max_length : SFT (AdamW; prompts cut from the left to ``max_length`` tokens).
    max_train_users : int or None
        Subsample of training users (seeded); ``None`` = all.
    ks : cut-offs of HR/NDCG/MRR.
    retriever : str or None
        ``mmsrarec``: a trained sequential run (SASRec) whose user states find the similar training users.
    similar_users : int
        ``mmsrarec``: |S_u| (3).
    keywords : {"file", "item-text"}
        ``mmsrarec``: generated keywords (``DATA/enrich/item-keywords.parquet``), or the item's own text in
        their place (a stand-in when generating keywords for every listed item is beyond the budget).
    multitask : bool
        ``mmsrarec``: add the two auxiliary instruction types to the SFT data.
    eval_every : int
        Score the valid lists every this many SFT steps (0: after every epoch; the end of each epoch is always
        scored); the adapter with the best valid ``select_metric`` is kept.
    select_metric : str
        A metric of the valid lists (``AUC``, ``HR@5``, ``NDCG@5``, ...), higher is better.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: Literal["mllm-msr", "mmsrarec"] = "mllm-msr"
    data: str
    candidates: str
    model: str
    seed: int = 0
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lr: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=0)
    batch_size: int = Field(4, ge=1)
    max_length: int = Field(1024, ge=16)
    max_train_users: int | None = Field(None, ge=1)
    device: str = "cpu"
    ks: list[int] = Field(default_factory=lambda: [5, 10])
    retriever: str | None = None
    similar_users: int = Field(3, ge=1)
    keywords: Literal["file", "item-text"] = "file"
    multitask: bool = True
    eval_every: int = Field(0, ge=0)
    select_metric: str = "AUC"


def resolve_model(arg: str) -> Path:
    """``smollm2`` -> the offline SmolLM2-135M-Instruct directory; a path -> that directory."""
    if arg.lower() in ("smollm2", "smollm2-135m-instruct"):
        from ..enrich.backends import offline

        if hasattr(offline, "smollm2_dir"):
            return Path(offline.smollm2_dir())
        cached = offline.cache_root() / "models" / offline.SMOLLM2_DIRNAME
        if not (cached / "config.json").exists():
            raise InputError("SmolLM2 has not been converted yet; run `mmseqrec enrich DATA --backend offline` "
                             "once", field="--model")
        return cached
    path = Path(arg)
    if not (path / "config.json").exists():
        raise InputError("not a local transformers model directory (no config.json; there is no model hub "
                         "here: use a saved directory or 'smollm2')", file=path, field="--model")
    return path


def load_lm(path: str | Path, device: str = "cpu"):
    """``(model, tokenizer)`` of a causal LM directory (float32), refusing a tokenizer without chat template."""
    tr = require("transformers", "mllm", "the LLM recommender")
    tok = tr.AutoTokenizer.from_pretrained(path)
    if not getattr(tok, "chat_template", None):
        raise InputError("the model has no chat template; the yes/no prompt needs an instruction-tuned (chat) "
                         "model", file=path, field="--model")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = tr.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    return model, tok


def _refuse_held_out_in_training_prefix(cs, ds: DatasetDir, path: str) -> None:
    """MLLM-MSR's preference summaries cover each user's leave-one-out training prefix: a valid/test row whose
    target lies inside that prefix (an impression-split file) would be summarised into its own prompt."""
    seqs = ds.sequences
    inside = (cs.split != "train") & (cs.hist_end(seqs) < seqs.indptr[cs.users + 1] - 2)
    if inside.any():
        i = int(np.argmax(inside))
        raise InputError(f"{int(inside.sum())} valid/test row(s) (first: user {int(cs.users[i])}) have their target "
                         "inside the user's training prefix, which the preference summaries cover (an impression "
                         "split?); mllm-msr needs a --split user file (use --method mmsrarec for impression lists)",
                         file=path, line=i + 1, field="split")


class ItemImages:
    """Item images (the dataset's ``image`` column) decoded once, resized within ``max_pixels``."""

    def __init__(self, ds: DatasetDir, max_pixels: int = 448 * 448) -> None:
        import polars as pl

        items = ds.items.sort("item")
        self.refs = np.full(ds.n_items + 1, None, dtype=object)
        if "image" in items.columns:
            self.refs[items["item"].to_numpy()] = np.asarray(items["image"].cast(pl.Utf8).to_list() + [None],
                                                             dtype=object)[:-1]
        self.base, self.max_pixels = ds.path, max_pixels
        self.cache: dict[int, Any] = {}
        self.missing: dict[str, int] = {}

    def get(self, item: int):
        if item not in self.cache:
            from ..enrich.backends.base import resize_to_budget
            from ..enrich.images import load_image

            img, why = load_image(self.refs[item], self.base, Path(self.base) / "enrich" / "images")
            if img is None:
                key = why.split(":")[0]
                self.missing[key] = self.missing.get(key, 0) + 1
            self.cache[item] = None if img is None else resize_to_budget(img, self.max_pixels)
        return self.cache[item]

    def trim(self, max_items: int) -> None:
        """Forget the decoded images once more than ``max_items`` are held (a long-running server)."""
        if len(self.cache) > max_items:
            self.cache.clear()


class Prompter:
    """``prompt(row, item)`` for the rows of a candidate set, per method; ``aux(row)`` the auxiliary SFT pairs."""

    def __init__(self, cfg: LLMRecConfig, ds: DatasetDir, cs) -> None:
        self.cs = cs
        self.images: ItemImages | None = None  # set for image-text-to-text models
        self.row_of = np.full(ds.n_users + 1, -1, dtype=np.int64)
        self.row_of[cs.users] = np.arange(cs.users.size)
        if cfg.method == "mllm-msr":
            _refuse_held_out_in_training_prefix(cs, ds, cfg.candidates)
            self.texts: PromptTexts | None = load_prompt_texts(ds, cs.users)  # every user needs a summary
            self.kw = None
            self.sources: dict[str, Any] = dict(self.texts.sources)
            return
        from ..train.run import load_run
        from .mmsrarec import KeywordPrompter, item_text_keywords, load_keywords
        from .prompts import item_titles
        from .retrieval import similar_users

        if cfg.retriever is None:
            raise InputError("mmsrarec needs --retriever RUN (a trained SASRec run on the same dataset)",
                             field="--retriever")
        titles = item_titles(ds)
        keywords, counts = (load_keywords(ds, titles) if cfg.keywords == "file" else item_text_keywords(ds))
        ret = load_run(cfg.retriever, device=cfg.device, data_dir=ds.path)
        sim = similar_users(ret.model, ds.sequences, cs, k=cfg.similar_users, device=cfg.device)
        self.texts, self.kw = None, KeywordPrompter(cs, sim, keywords, titles)
        self.sources = {"template": "mmsrarec/recommend@1", "keywords": ("enrich/item-keywords.parquet" if
                                                                         cfg.keywords == "file" else "item text"),
                        **counts,
                        "retriever": str(cfg.retriever), "similar_users": cfg.similar_users}

    def prompt(self, row: int, item: int):
        """A text prompt, or with ``images`` a :class:`.vision.VisionPrompt` carrying the candidate's image
        (an item without a usable image keeps the text prompt, counted in ``sources``)."""
        image = self.images.get(int(item)) if self.images is not None else None
        if self.texts is not None:
            user = int(self.cs.users[row])
            text = (self.texts.prompt(user, int(item)) if image is None else
                    self.texts.prompt_image(user, int(item)))
        else:
            text = self.kw.prompt(row, int(item))
        if self.images is None:
            return text
        from .vision import VisionPrompt

        return VisionPrompt(text, image)

    def aux(self, row: int) -> list[tuple[str, str]]:
        return [] if self.kw is None else self.kw.aux(row)


def _evalset(cs, ds: DatasetDir, split_name: str, path: str) -> tuple[EvalSet, np.ndarray | None]:
    """The file's rows of ``split_name`` as evaluation cases (history ends at each row's ``position``) and those
    rows; a file without positions (older files: leave-one-out rows) uses the leave-one-out cases (rows None)."""
    if cs.positions is None:
        return getattr(leave_one_out(ds.sequences), split_name), None
    from ..evaluate.candidates import file_cases

    return file_cases(path, ds.sequences, split_name)


def _score_split(scorer: YesNoScorer, prompter: Prompter, ds: DatasetDir, cand_path: str, split_name: str,
                 ks: list[int]) -> RankingResult:
    """Score the file's rows of ``split_name`` (one shared-prefix forward per user) and rank them with the one
    evaluator, under ``candidates:file=PATH``."""
    evalset, file_rows = _evalset(prompter.cs, ds, split_name, cand_path)
    lists = read_candidates(cand_path, evalset.users, evalset.targets, ds.n_users, ds.n_items, split=split_name)
    rows = prompter.row_of[evalset.users[lists.cases]] if file_rows is None else file_rows[lists.cases]
    prompts = [[prompter.prompt(int(r), int(it)) for it in items] for r, items in zip(rows, lists.items, strict=True)]
    users = getattr(scorer, "score_users", None)  # text: the cached head is shared across users
    scores = np.stack(users(prompts) if users else [scorer.score_shared(p) for p in prompts])
    expected = torch.from_numpy(lists.items)
    table = torch.from_numpy(scores.astype(np.float32))
    ptr = [0]

    def score_fn(hist: torch.Tensor, cand: torch.Tensor | None) -> torch.Tensor:
        b = cand.shape[0]
        if not torch.equal(cand.cpu(), expected[ptr[0]: ptr[0] + b]):  # the evaluator's order is the file's
            raise RuntimeError("candidate lists reached the scorer in an unexpected order")
        out = table[ptr[0]: ptr[0] + b]
        ptr[0] += b
        return out

    return evaluate_ranking(score_fn, evalset, ds.sequences, f"candidates:file={cand_path}", ks=tuple(ks),
                            progress=False)


class Backbone:
    """The model behind a run: a text causal LM (:func:`load_lm`) or an image-text-to-text model
    (:mod:`.vision`, chosen when the directory's config has a vision tower), with its SFT encoding, batching,
    LoRA targets and scorer."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        from .vision import is_vlm

        self.vision = is_vlm(model_dir)
        if self.vision:
            from .vision import load_vlm

            self.model, self.processor = load_vlm(model_dir, device)
            self.tok = self.processor.tokenizer
        else:
            self.model, self.tok = load_lm(model_dir, device)
            self.processor = None
        self.device = device

    @property
    def lora_targets(self) -> str:
        from .vision import LANGUAGE_LORA_TARGETS

        return LANGUAGE_LORA_TARGETS if self.vision else "all-linear"

    def encode(self, prompt, label: bool | str, max_length: int):
        if self.vision:
            from .vision import encode_sft_vision

            return encode_sft_vision(self.processor, prompt, label)
        return encode_sft(self.tok, prompt, label, max_length)

    def collate(self, examples: list) -> dict[str, torch.Tensor]:
        if self.vision:
            from .vision import collate_sft_vision

            return collate_sft_vision(examples, self.tok.pad_token_id)
        return collate_sft(examples, self.tok.pad_token_id)

    def scorer(self, model):
        if self.vision:
            from .vision import VisionYesNoScorer

            return VisionYesNoScorer(model, self.processor, self.device)
        return YesNoScorer(model, self.tok, self.device)


def _sft_examples(bb: Backbone, prompter: Prompter, rows: np.ndarray, rng: np.random.Generator, max_length: int,
                  multitask: bool = False) -> tuple[list, int]:
    """1 positive + 1 negative yes/no example per training row (+ the auxiliary pairs); returns the examples and
    the number of yes/no pairs."""
    cs = prompter.cs
    out = []
    for i in rows:
        negs = cs.candidates[i][cs.candidates[i] != cs.targets[i]]
        out.append(bb.encode(prompter.prompt(int(i), int(cs.targets[i])), True, max_length))
        out.append(bb.encode(prompter.prompt(int(i), int(rng.choice(negs))), False, max_length))
        if multitask:
            out += [bb.encode(p, a, max_length) for p, a in prompter.aux(int(i))]
    return out, int(rows.size)


def _write_results(run: Path, cfg: LLMRecConfig, results: dict[str, RankingResult], ds: DatasetDir,
                   extra: dict[str, Any]) -> dict[str, Any]:
    first = results["test"]
    record: dict[str, Any] = {**first.setting(), "ks": list(first.ks), "seed": cfg.seed, "method": cfg.method,
                              "data": {"path": str(ds.path), **ds.identity}, **extra}
    for name, res in results.items():
        res.save_ranks(run / (RANKS if name == "test" else f"ranks-{name}.parquet"))
        record[name] = {k: (int(v) if k == "n_cases" else float(v)) for k, v in res.metrics.items()}
    atomic_write_json(run / METRICS, record)
    return record


def train_llmrec(cfg: LLMRecConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True
                 ) -> dict[str, Any]:
    """LoRA SFT of ``cfg.model`` on the training users' yes/no pairs with model selection on the file's
    **valid** lists (scored after every epoch, or every ``eval_every`` steps; the adapter with the best valid
    ``select_metric`` is kept, ties to the earlier one), then score valid and test with it; returns the metrics
    record (also ``RUN/metrics.json``)."""
    peft = require("peft", "llm", "LoRA fine-tuning of the LLM recommender")
    run = Path(out)
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise InputError("run directory exists and is not empty; pass --overwrite to replace it", file=run)
    ds = DatasetDir(cfg.data)
    cs = read_candidate_set(cfg.candidates, ds.n_items)
    prompter = Prompter(cfg, ds, cs)  # inputs checked before anything is written
    allowed = ["AUC", "AUC_global"] + [f"{m}@{k}" for m in ("HR", "NDCG", "MRR") for k in cfg.ks]
    if cfg.select_metric not in allowed:
        raise InputError(f"unknown selection metric {cfg.select_metric!r}; one of {', '.join(allowed)}",
                         field="--select-metric")
    if cs.rows("valid").size == 0:
        raise InputError("the candidate file has no valid rows (model selection needs them)", file=cfg.candidates,
                         field="split")
    model_dir = resolve_model(cfg.model)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    bb = Backbone(model_dir, cfg.device)
    if bb.vision:
        prompter.images = ItemImages(ds)
    lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=bb.lora_targets, task_type="CAUSAL_LM")
    model = peft.get_peft_model(bb.model, lora)
    train_rows = cs.rows("train")
    if cfg.max_train_users is not None and train_rows.size > cfg.max_train_users:
        train_rows = np.sort(rng.choice(train_rows, cfg.max_train_users, replace=False))
    run.mkdir(parents=True, exist_ok=True)
    from ..fileio import sha256_file

    resolved = {**cfg.model_dump(), "model_dir": str(model_dir), "candidates_sha256": sha256_file(cfg.candidates),
                "prompt_sources": prompter.sources, "n_train_users": int(train_rows.size),
                "images": bb.vision}
    atomic_write_text(run / CONFIG, yaml.safe_dump(resolved, sort_keys=False))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    scorer = bb.scorer(model)
    log_lines: list[dict[str, Any]] = []
    sel: dict[str, Any] = {"metric": f"valid {cfg.select_metric}", "best": None, "history": []}
    best_state: dict[str, torch.Tensor] = {}
    best_valid: list[RankingResult] = []
    t0 = time.perf_counter()
    eval_seconds = 0.0

    def select(epoch: int, step: int) -> None:
        nonlocal eval_seconds
        t = time.perf_counter()
        model.eval()
        res = _score_split(scorer, prompter, ds, cfg.candidates, "valid", cfg.ks)
        model.train()
        value = float(res.metrics[cfg.select_metric])
        sel["history"].append({"epoch": epoch, "step": step, cfg.select_metric: value})
        log_lines.append({"eval": "valid", "epoch": epoch, "step": step, cfg.select_metric: value})
        if sel["best"] is None or value > sel["best"][cfg.select_metric]:  # ties keep the earlier adapter
            sel["best"] = {"epoch": epoch, "step": step, cfg.select_metric: value}
            best_state.clear()
            best_state.update({k: v.detach().clone() for k, v in peft.get_peft_model_state_dict(model).items()})
            best_valid[:] = [res]
        eval_seconds += time.perf_counter() - t

    step = 0
    if cfg.epochs == 0:
        select(0, 0)
    for epoch in range(cfg.epochs):
        model.train()
        ex, n_pairs = _sft_examples(bb, prompter, train_rows, rng, cfg.max_length,
                                    cfg.multitask and cfg.method == "mmsrarec")
        order = rng.permutation(len(ex))
        losses = []
        for b0 in range(0, len(order), cfg.batch_size):
            batch = bb.collate([ex[j] for j in order[b0:b0 + cfg.batch_size]])
            loss = answer_loss(model, {k: v.to(cfg.device) for k, v in batch.items()})
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if cfg.eval_every and step % cfg.eval_every == 0:
                select(epoch + 1, step)
        log_lines.append({"epoch": epoch + 1, "sft_loss": float(np.mean(losses)) if losses else None,
                          "n_pairs": n_pairs, "n_examples": len(ex), "steps": step,
                          "seconds": time.perf_counter() - t0})
        if not cfg.eval_every or step % cfg.eval_every:
            select(epoch + 1, step)  # the end of every epoch is a candidate too
    train_seconds = time.perf_counter() - t0 - eval_seconds
    peft.set_peft_model_state_dict(model, best_state)
    atomic_write_text(run / LOG, "".join(json.dumps(r) + "\n" for r in log_lines))
    with atomic_dir(run / ADAPTER, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    model.eval()
    return _evaluate(run, cfg, bb, model, ds, prompter, {"train_seconds": train_seconds, "selection": sel},
                     known={"valid": best_valid[0]})


def _evaluate(run: Path, cfg: LLMRecConfig, bb: Backbone, model, ds: DatasetDir, prompter: Prompter,
              extra: dict[str, Any], known: dict[str, RankingResult] | None = None) -> dict[str, Any]:
    """Score the splits not in ``known`` (valid, test) and write the metrics record and ranks."""
    scorer = bb.scorer(model)
    t0 = time.perf_counter()
    results = dict(known or {})
    scored = [s for s in ("valid", "test") if s not in results]
    for s in scored:
        results[s] = _score_split(scorer, prompter, ds, cfg.candidates, s, cfg.ks)
    n_users = sum(results[s].users.size for s in scored)
    extra = {**extra, "inference": {"forwards_per_user": scorer.forwards / max(n_users, 1),
                                    "seconds_per_user": (time.perf_counter() - t0) / max(n_users, 1),
                                    "device": cfg.device, "splits": scored, "images": bb.vision}}
    if prompter.images is not None:
        extra["inference"]["items_without_image"] = dict(prompter.images.missing)
    return _write_results(run, cfg, {s: results[s] for s in ("valid", "test")}, ds, extra)


def evaluate_llmrec(run_dir: str | Path, device: str | None = None) -> dict[str, Any]:
    """Re-score a trained LLM-recommender run (base model + its adapter) and rewrite its metrics and ranks."""
    peft = require("peft", "llm", "the LLM recommender")
    run = Path(run_dir)
    if not (run / CONFIG).exists() or not (run / ADAPTER).is_dir():
        raise InputError("not an LLM-recommender run (needs config.yaml and adapter/); run `mmseqrec llmrec "
                         "train` first", file=run)
    raw = yaml.safe_load((run / CONFIG).read_text())
    sha = raw.pop("candidates_sha256", None)
    model_dir = raw.pop("model_dir", None)
    for k in ("prompt_sources", "n_train_users", "images"):
        raw.pop(k, None)
    cfg = LLMRecConfig.model_validate({**raw, **({"device": device} if device else {})})
    from ..fileio import sha256_file

    if sha is not None and sha256_file(cfg.candidates) != sha:
        raise InputError("the candidate file changed since the run was trained", file=cfg.candidates)
    ds = DatasetDir(cfg.data)
    cs = read_candidate_set(cfg.candidates, ds.n_items)
    prompter = Prompter(cfg, ds, cs)
    bb = Backbone(model_dir or resolve_model(cfg.model), cfg.device)
    if bb.vision:
        prompter.images = ItemImages(ds)
    model = peft.PeftModel.from_pretrained(bb.model, run / ADAPTER).eval()
    old = json.loads((run / METRICS).read_text()) if (run / METRICS).exists() else {}
    return _evaluate(run, cfg, bb, model, ds, prompter, {"train_seconds": old.get("train_seconds"),
                                                         "selection": old.get("selection")})
