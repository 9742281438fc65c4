"""Top-K from an LLM-recommender run (``mmseqrec llmrec train``: MLLM-MSR, MMSRARec): retrieve, then re-rank.

An LLM recommender answers yes/no for one (user, candidate) pair; it cannot score a whole catalogue, so a query
goes through two named stages:

1. **candidates**: the top-``N`` of a retrieval stage, ``popularity`` (training interactions, as the popularity
   baseline counts them) or ``run:NAME`` (another run of the serve seam, e.g. SASRec or LightGCN, answering the
   same query). History items are left out unless ``exclude_seen`` is false.
2. **re-rank**: the run's yes/no scorer (its LoRA adapter on its base LM), all candidates of the query in one
   shared-prefix batched forward (:meth:`~mmseqrec.llmrec.scoring.YesNoScorer.score_shared`); score = p(yes).
   A run on an image-text-to-text model (LLaVA, ...) is loaded and scored as ``llmrec evaluate`` does
   (:class:`~mmseqrec.llmrec.run.Backbone`, :class:`~mmseqrec.llmrec.vision.VisionYesNoScorer`): each prompt
   carries the candidate's image from the dataset's ``image`` column, an item without a usable image keeps the
   text prompt, and ``result.candidates["images"]`` counts both (``with_image``, ``text_only``).

The prompt is the one the run was trained and evaluated with. MLLM-MSR fills it with a user-preference summary:
the stored one (``enrich/user-preference.parquet``) when the query names a ``user`` who has one, otherwise a text
listing the titles of the history (there is no summary of an ad-hoc history); MMSRARec with the keywords of the
history's last items and the next items of the most similar *training* users of its candidate file, found by its
retriever run over the query's history. Every result says which candidate stage and which preference text were
used (``result.candidates``, ``result.preference``). Call signature as :class:`~.recommend.Recommender`, plus
``user``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InputError, require
from .recommend import RecommendResult, cold_start_error, item_tables, split_query, top_k, training_popularity

__all__ = ["N_CANDIDATES", "LLMRecommender", "is_llmrec_run"]

#: candidates re-ranked per query by default: the papers' lists hold 1 + 20 items, and the cost of a query grows
#: linearly with N (benchmarks/llmrec_speed.py)
N_CANDIDATES = 20
#: history items whose titles stand in for the summary of an ad-hoc history (MLLM-MSR)
_TITLE_HISTORY = 10
#: decoded item images kept between queries (image runs); beyond it the cache starts again (<= 448x448 RGB each,
#: about 0.6 MB: a long-running server must not end up holding the whole catalogue's images)
_IMAGE_CACHE = 512


def is_llmrec_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by ``mmseqrec llmrec train`` (``config.yaml`` with a ``method`` and
    ``candidates``, and an ``adapter/`` folder)."""
    import yaml

    p = Path(run_dir)
    if not (p / "config.yaml").is_file() or not (p / "adapter").is_dir():
        return False
    raw = yaml.safe_load((p / "config.yaml").read_text()) or {}
    return isinstance(raw, dict) and "method" in raw and "candidates" in raw


@dataclass
class LLMRun:
    """A loaded LLM-recommender run (what the serve app reads: ``path``, ``dataset``, ``model``)."""

    path: Path
    config: Any  # LLMRecConfig
    dataset: Any  # DatasetDir
    model: Any  # peft model (base LM + adapter), eval mode
    model_dir: Path
    device: str


class LLMRecommender:
    """A loaded LLM-recommender run answering many queries.

    Parameters
    ----------
    run_dir : a directory written by ``mmseqrec llmrec train``.
    candidates_from : ``"popularity"``, or a loaded recommender of the same dataset (any of the serve seam).
    n_candidates : ``N``, candidates re-ranked per query.
    candidates_name : the label of a recommender given as ``candidates_from`` (shown as ``run:NAME``).
    device, data_dir, force : torch device; another copy of the run's dataset (default: the recorded path), checked
        against the identity the run recorded unless ``force`` (:func:`mmseqrec.train.run.check_data`).
    """

    takes_user = True

    def __init__(self, run_dir: str | Path, device: str | None = "cpu", data_dir: str | Path | None = None,
                 candidates_from: Any = "popularity", n_candidates: int = N_CANDIDATES,
                 candidates_name: str | None = None, force: bool = False) -> None:
        import yaml

        from ..data.dataset import DatasetDir
        from ..llmrec.prompts import load_prompt_texts
        from ..llmrec.run import ADAPTER, CONFIG, Backbone, ItemImages, LLMRecConfig, resolve_model
        from ..train.run import check_data

        peft = require("peft", "llm", "serving an LLM-recommender run")
        path = Path(run_dir)
        if not is_llmrec_run(path):
            raise InputError("not an LLM-recommender run (needs config.yaml with method and candidates, and "
                             "adapter/); run `mmseqrec llmrec train` first", file=path)
        if int(n_candidates) < 1:
            raise InputError(f"the number of candidates must be at least 1, got {n_candidates}",
                             field="--n-candidates")
        raw = yaml.safe_load((path / CONFIG).read_text())
        device = device or str(raw.get("device", "cpu"))
        cfg = LLMRecConfig.model_validate({**{k: v for k, v in raw.items() if k in LLMRecConfig.model_fields},
                                           "device": device})
        ds = DatasetDir(data_dir if data_dir is not None else cfg.data)
        check_data(path, ds, force=force)  # the dataset identity recorded in RUN/metrics.json
        self.index, self.ids, self.titles = item_tables(ds)
        self.n_candidates = int(n_candidates)
        self._set_stage(candidates_from, candidates_name)  # options checked before the model is loaded
        model_dir = Path(raw["model_dir"]) if raw.get("model_dir") else resolve_model(cfg.model)
        bb = Backbone(model_dir, device)  # a text LM, or an image-text-to-text model as evaluation loads it
        model = peft.PeftModel.from_pretrained(bb.model, path / ADAPTER).eval()
        self.run = LLMRun(path, cfg, ds, model, model_dir, device)
        self.scorer = bb.scorer(model)
        self.images = ItemImages(ds) if bb.vision else None
        self.search = None  # candidates are re-ranked, never indexed
        self._popularity: torch.Tensor | None = None
        if cfg.method == "mllm-msr":
            self.texts = load_prompt_texts(ds)  # every user's summary (None where a user has none)
            self.keywords = None
        else:
            self._init_mmsrarec(cfg, ds)

    def _set_stage(self, candidates_from: Any, name: str | None) -> None:
        if isinstance(candidates_from, str):
            if candidates_from != "popularity":
                raise InputError(f"unknown candidate stage {candidates_from!r}; use popularity or a run",
                                 field="--candidates-from")
            self.stage, self.stage_name = None, "popularity"
        elif isinstance(candidates_from, LLMRecommender):
            raise InputError("the candidate stage must score the whole catalogue (a sequential or general run), not "
                             "another LLM recommender", field="--candidates-from")
        else:
            if list(map(str, candidates_from.ids)) != list(map(str, self.ids)):
                raise InputError("the candidate run was trained on another item catalogue than the LLM run",
                                 field="--candidates-from")
            self.stage = candidates_from
            self.stage_name = f"run:{name or Path(candidates_from.run.path).name}"

    # ------------------------------------------------------------------ MMSRARec context
    def _init_mmsrarec(self, cfg: Any, ds: Any) -> None:
        from ..llmrec.candidates import read_candidate_set
        from ..llmrec.mmsrarec import load_keywords
        from ..llmrec.prompts import item_titles
        from ..llmrec.retrieval import user_states
        from ..train.run import load_run

        if cfg.retriever is None:
            raise InputError("the mmsrarec run records no retriever run", file=self.run.path, field="retriever")
        self.texts = None
        self.kw_titles = item_titles(ds)
        self.keywords, _ = load_keywords(ds, self.kw_titles)
        self.retriever = load_run(cfg.retriever, device=self.run.device, data_dir=ds.path).model
        cs = read_candidate_set(cfg.candidates, ds.n_items)
        pool = cs.rows("train")
        if pool.size < cfg.similar_users:
            raise InputError(f"only {pool.size} training users for {cfg.similar_users} similar users",
                             file=cfg.candidates)
        # keyed as in mmseqrec.llmrec.retrieval.similar_users: the history before each training row's target (its
        # position: the last item of a leave-one-out row, anywhere in the sequence for an impression row)
        self.pool_states = user_states(self.retriever, ds.sequences, cs.users[pool], cs.hist_end(ds.sequences)[pool],
                                       device=self.run.device)
        self.pool_users, self.pool_next = cs.users[pool], cs.targets[pool]
        self.history_len = int(cs.history.shape[1])
        self.n_similar = int(cfg.similar_users)

    def similar_next_items(self, known: list[int], user: int | None = None) -> np.ndarray:
        """The next items of the ``n_similar`` training users most similar (cosine of the retriever's user
        states; the last 50 items, as :func:`~mmseqrec.llmrec.retrieval.similar_users`) to ``known``, never
        ``user`` itself."""
        h = torch.zeros(1, 50, dtype=torch.long)
        tail = known[-50:]
        h[0, -len(tail):] = torch.tensor(tail, dtype=torch.long)
        with torch.inference_mode():
            q = torch.nn.functional.normalize(self.retriever.user_states(h.to(self.run.device)).float(), dim=-1)
        sim = self.pool_states @ q.cpu().numpy()[0]
        if user is not None:
            sim[self.pool_users == user] = -np.inf
        order = np.argsort(-sim, kind="stable")[: self.n_similar]
        return self.pool_next[order]

    # ------------------------------------------------------------------ prompts
    def _preference(self, known: list[int], user: int | None) -> dict[str, str]:
        """MLLM-MSR: the stored summary of ``user``, else the history's titles (labelled)."""
        pref = None if user is None else self.texts.preference[user]
        if pref:
            return {"text": str(pref), "source": "enrich/user-preference.parquet"}
        titles = "; ".join(f"'{self.texts.title[i]}'" for i in known[-_TITLE_HISTORY:])
        why = "no stored summary for this user" if user is not None else "no stored summary for an ad-hoc history"
        return {"text": f"The user interacted with these items, oldest first: {titles}.",
                "source": f"history titles ({why})"}

    def prompts(self, known: list[int], candidates: np.ndarray, user: int | None = None
                ) -> tuple[list[Any], dict[str, str] | None]:
        """The run's prompts for ``candidates`` given the known history (internal ids) and, for the summary or
        to keep a training user out of its own neighbours, the internal ``user`` id; and the preference used.
        For a run on an image-text-to-text model each prompt is a :class:`~mmseqrec.llmrec.vision.VisionPrompt`
        carrying the candidate's image, as :class:`~mmseqrec.llmrec.run.Prompter` builds them in evaluation (an
        item without a usable image keeps the text prompt)."""
        if self.images is not None:
            self.images.trim(_IMAGE_CACHE)
        images = ([None] * len(candidates) if self.images is None else
                  [self.images.get(int(i)) for i in candidates])
        if self.texts is not None:
            pref = self._preference(known, user)
            texts = dataclasses.replace(self.texts, preference=np.asarray([None, pref["text"]], dtype=object))
            text = [texts.prompt(1, int(i)) if im is None else texts.prompt_image(1, int(i))
                    for i, im in zip(candidates, images, strict=True)]
            return self._with_images(text, images), pref
        from ..llmrec.candidates import CandidateSet
        from ..llmrec.mmsrarec import KeywordPrompter
        from ..llmrec.retrieval import SimilarUsers

        hist = np.zeros((1, self.history_len), dtype=np.int64)
        tail = known[-self.history_len:]
        hist[0, self.history_len - len(tail):] = tail
        nxt = self.similar_next_items(known, user)[None, :]
        row = CandidateSet(users=np.zeros(1, np.int64), targets=np.zeros(1, np.int64), candidates=candidates[None],
                           split=np.asarray(["test"]), history=hist)
        kp = KeywordPrompter(row, SimilarUsers(np.zeros_like(nxt), nxt, np.zeros(nxt.shape)), self.keywords,
                             self.kw_titles)
        return self._with_images([kp.prompt(0, int(i)) for i in candidates], images), None

    def _with_images(self, texts: list[str], images: list[Any]) -> list[Any]:
        if self.images is None:
            return texts
        from ..llmrec.vision import VisionPrompt

        return [VisionPrompt(t, im) for t, im in zip(texts, images, strict=True)]

    # ------------------------------------------------------------------ the seam
    def popularity(self) -> torch.Tensor:
        """Training interactions per item id (index 0 = padding), as used by the popularity baseline."""
        if self._popularity is None:
            self._popularity = training_popularity(self.run.dataset)
        return self._popularity

    def candidates(self, history: list[str], known: list[int], exclude_seen: bool, user: str | None
                   ) -> np.ndarray:
        """Internal ids of the candidate stage's top-``n_candidates`` for this query (best first)."""
        if self.stage is None:
            scores = self.popularity().clone()
            scores[0] = float("-inf")
            if exclude_seen:
                scores[torch.tensor(known, dtype=torch.long)] = float("-inf")
            n = min(self.n_candidates, int(torch.isfinite(scores).sum()))
            return torch.topk(scores, n).indices.numpy()
        extra = {"user": user} if user is not None and getattr(self.stage, "takes_user", False) else {}
        res = self.stage(history, self.n_candidates, exclude_seen, "error", **extra)
        return np.asarray([self.index[i] for i, _, _ in res.items], dtype=np.int64)

    def __call__(self, history: list[str], k: int = 10, exclude_seen: bool = True, cold: str = "error",
                 user: str | None = None) -> RecommendResult:
        known, unknown = split_query(self.index, history, k, cold)
        history = [str(h) for h in history]
        if not known:
            if cold == "error":
                raise cold_start_error(history)
            scores = self.popularity().clone()
            scores[0] = float("-inf")
            return RecommendResult(items=top_k(scores, k, self.ids, self.titles), unknown=unknown, history=history,
                                   source="popularity")
        uid = None
        if user is not None:
            users = self.run.dataset.users
            match = [] if users is None else users.filter(users["user_id"].cast(str) == str(user))["user"].to_list()
            if not match:
                raise InputError(f"unknown user id {user!r}", field="--user")
            uid = int(match[0])
        cands = self.candidates(history, known, exclude_seen, user)
        stage = {"stage": self.stage_name, "n": self.n_candidates, "n_scored": int(cands.size)}
        scores = torch.full((len(self.ids),), float("-inf"))
        pref = None
        if cands.size:
            prompts, pref = self.prompts(known, cands, uid)
            scores[torch.from_numpy(cands)] = torch.from_numpy(self.scorer.score_shared(prompts)).float()
            if self.images is not None:
                n_text = sum(p.image is None for p in prompts)
                stage["images"] = {"with_image": len(prompts) - n_text, "text_only": n_text}
        return RecommendResult(items=top_k(scores, k, self.ids, self.titles), unknown=unknown, history=history,
                               source="model", candidates=stage, preference=pref)

    def describe(self) -> dict[str, Any]:
        """What ``/health`` and ``/runs`` show for this run."""
        return {"path": str(self.run.path), "model": self.run.config.method, "item_encoder": None,
                "base_model": str(self.run.model_dir), "images": self.images is not None,
                "candidates": {"stage": self.stage_name, "n": self.n_candidates},
                "index": {"kind": f"llm re-rank of {self.stage_name} top-{self.n_candidates}"}}
