"""MMSRARec (methods.md §4): keyword prompts with similar users' next items, and multi-task SFT.

The paper's prompt and instruction tables are unreadable images, so every template here is **reconstructed**
from its text: the yes/no prompt holds the keywords of the user's history items, the keywords of the items that
the ``k`` most similar *training* users interacted with next (:mod:`.retrieval`) and the candidate's title and
keywords. Multi-task SFT ("inspired by LC-Rec") adds two auxiliary instruction types per training user:
next-item title generation from the history keywords, and item identification (keywords -> title).

Keywords come from ``DATA/enrich/item-keywords.parquet`` (MMSRARec's ``item-keywords`` task: image and text views
summarised separately, joined here as ``text: ...; image: ...``); an item without any keyword row falls back to
its title (counted in the run's prompt sources). A missing keyword file is an error, unless the run asks for
``keywords: item-text`` (:func:`item_text_keywords`: the item's own text in place of generated keywords).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..data.dataset import DatasetDir
from ..enrich.tasks import PromptTemplate
from ..errors import InputError
from .candidates import CandidateSet
from .retrieval import SimilarUsers

__all__ = ["AUX_TEMPLATES", "RECOMMEND_KW", "KeywordPrompter", "item_text_keywords", "keyword_items",
           "load_keywords"]

RECOMMEND_KW = PromptTemplate(
    "mmsrarec/recommend", "1",
    "A user interacted with items described by these keywords, oldest first:\n{history}"
    "Users with similar histories interacted next with items described by:\n{similar}"
    "Candidate item: {title}. Keywords: {keywords}\n"
    "Will this user interact with the candidate item next? Answer only 'yes' or 'no'.",
    "reconstructed", "MMSRARec stage 3 (Table 2 is an image; prompt not readable)",
)
AUX_TEMPLATES = {
    "next-title": PromptTemplate(
        "mmsrarec/next-title", "1",
        "A user interacted with items described by these keywords, oldest first:\n{history}"
        "Predict the title of the item this user interacts with next. Answer with the title only.",
        "reconstructed", "MMSRARec multi-task SFT (LC-Rec-style sequential instruction)"),
    "keywords-to-title": PromptTemplate(
        "mmsrarec/keywords-to-title", "1",
        "Which item do these keywords describe: {keywords}? Answer with its title only.",
        "reconstructed", "MMSRARec multi-task SFT (LC-Rec-style item identification)"),
}


def item_text_keywords(ds: DatasetDir) -> tuple[np.ndarray, dict[str, int]]:
    """``--keywords item-text``: the item's own text (:func:`~mmseqrec.enrich.tasks.item_descriptions`, e.g.
    MovieLens ``categories: Comedy, Drama``) stands in for generated keywords, for every item; no keyword
    generation and no GRPO tuning (a budget stand-in, recorded in the run's prompt sources)."""
    from ..enrich.tasks import item_descriptions

    desc, _ = item_descriptions(ds, 600)
    kw = np.asarray([" ".join(str(d or "").split()) for d in desc], dtype=object)
    return kw, {"keywords_from_file": 0, "keywords_item_text": int(len(kw) - 1)}


def load_keywords(ds: DatasetDir, titles: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Keywords per item id (index 0 = padding), views joined; titles where an item has none."""
    path = Path(ds.path) / "enrich" / "item-keywords.parquet"
    if not path.exists():
        raise InputError("no item keywords; run `mmseqrec enrich DATA --task item-keywords` first", file=path)
    df = pl.read_parquet(path)
    for col in ("item", "view", "text", "status"):
        if col not in df.columns:
            raise InputError("missing column (expected item, view, text, status)", file=path, field=col)
    ok = (df.filter((pl.col("status") == "ok") & pl.col("text").is_not_null())
          .sort("item", "view", descending=[False, True])  # text before image
          .group_by("item", maintain_order=True)
          .agg(pl.concat_str([pl.col("view"), pl.lit(": "), pl.col("text").str.replace_all(r"\s+", " ")])
               .str.join("; ").alias("kw")))
    kw = np.asarray(titles, dtype=object).copy()
    kw[ok["item"].to_numpy()] = np.asarray(ok["kw"].to_list() + [None], dtype=object)[:-1]
    n = len(titles) - 1
    return kw, {"keywords_from_file": int(ok.height), "keywords_title_fallback": int(n - ok.height)}


def keyword_items(cs: CandidateSet, similar: SimilarUsers) -> np.ndarray:
    """The sorted item ids whose keywords MMSRARec's prompts of ``cs`` use: every row's history items, all its
    candidates (training rows too: each seed draws its own negative) and its similar users' next items. The
    auxiliary prompts use the training targets, which are candidates."""
    ids = np.concatenate([cs.history.ravel(), cs.candidates.ravel(), similar.items.ravel()])
    return np.unique(ids[ids > 0])


@dataclass
class KeywordPrompter:
    """Builds MMSRARec prompts for row ``i`` of a candidate set."""

    cs: CandidateSet
    similar: SimilarUsers
    keywords: np.ndarray
    titles: np.ndarray

    def _history(self, i: int) -> str:
        return "".join(f"{k + 1}. {self.keywords[int(it)]}\n" for k, it in enumerate(self.cs.history[i]) if it > 0)

    def prompt(self, i: int, item: int) -> str:
        sim = "".join(f"- {self.keywords[int(it)]}\n" for it in self.similar.items[i])
        return RECOMMEND_KW.render(history=self._history(i), similar=sim, title=self.titles[item],
                                   keywords=self.keywords[item])

    def aux(self, i: int) -> list[tuple[str, str]]:
        """The two auxiliary ``(prompt, answer)`` pairs of training row ``i``."""
        t = int(self.cs.targets[i])
        return [(AUX_TEMPLATES["next-title"].render(history=self._history(i)), str(self.titles[t])),
                (AUX_TEMPLATES["keywords-to-title"].render(keywords=self.keywords[t]), str(self.titles[t]))]
