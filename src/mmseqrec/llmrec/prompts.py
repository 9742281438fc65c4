"""The yes/no recommendation prompt (MLLM-MSR) and the texts it is filled with.

The prompt puts the user's preference summary first and the candidate last, so the candidates of one user share
the whole prompt up to the candidate's title (:mod:`.scoring` runs that prefix once). Inputs come from the
enrichment tasks: ``DATA/enrich/user-preference.parquet`` (recurrent summaries over the user's *training*
prefix, so validation and test items never enter a prompt) and the item descriptions of
:func:`mmseqrec.enrich.tasks.item_descriptions` (``item-description`` outputs, else the item's own text, else
its title).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from ..data.dataset import DatasetDir
from ..enrich.tasks import PromptTemplate, item_descriptions
from ..errors import InputError

__all__ = ["RECOMMEND", "RECOMMEND_IMAGE", "PromptTexts", "item_titles", "load_preferences", "load_prompt_texts"]

RECOMMEND = PromptTemplate(
    "mllm-msr/recommend", "1",
    "Based on the previous interaction history, the user's preference can be summarized as: {preference} "
    "Please predict whether this user would interact with the item below at the next opportunity. Please only "
    "response 'yes' or 'no' based on your judgement, do not include any other content including words, space, "
    "and punctuations in your response. The item's title is '{title}', and its description is: {description}",
    "adapted", "MLLM-MSR test/microlens/test_with_llava_sft.py (recommendation prompt)",
    "the answer instruction is moved before the candidate, so that a user's 21 prompts share everything up to the "
    "candidate's title (one KV-cached prefix, short per-candidate suffixes); 'video' -> 'item'; the image clause "
    "('the given image is this video's cover') becomes the item's description (image summary or text) for "
    "text-only models; the '[INST] ... [/INST]' wrapper (and the training script's '[\\INST]' typo) is "
    "replaced by the model's own chat template",
)

RECOMMEND_IMAGE = PromptTemplate(
    "mllm-msr/recommend-image", "1",
    "Based on the previous interaction history, the user's preference can be summarized as: {preference} "
    "Please predict whether this user would interact with the item below at the next opportunity. Please only "
    "response 'yes' or 'no' based on your judgement, do not include any other content including words, space, "
    "and punctuations in your response. The item's title is '{title}', and the given image is this item's "
    "picture:",
    "adapted", "MLLM-MSR test/microlens/test_with_llava_sft.py (recommendation prompt, with the item image)",
    "image-text-to-text models: the candidate's image follows the prompt (as MLLM-MSR's cover image); the answer "
    "instruction is moved before the candidate as in mllm-msr/recommend; 'video' -> 'item'; the model's own chat "
    "template replaces '[INST] <image>\\n ... [/INST]'",
)

ANSWERS = ("yes", "no")


@dataclass(frozen=True)
class PromptTexts:
    """What the prompt is filled with, per id (index 0 = padding).

    Attributes
    ----------
    preference : ndarray of object [n_users + 1]
        ``None`` where a user has no summary.
    title, description : ndarray of object [n_items + 1]
    sources : dict
        Where each text came from (recorded in the run's config).
    """

    preference: np.ndarray
    title: np.ndarray
    description: np.ndarray
    sources: dict[str, str]

    def prompt(self, user: int, item: int) -> str:
        """The rendered prompt of ``user`` and candidate ``item`` (an :class:`InputError` without a summary)."""
        pref = self.preference[user]
        if pref is None:
            raise InputError(f"user {user} has no preference summary; run `mmseqrec enrich DATA --task "
                             "user-preference --mode recurrent` first", field="user")
        return RECOMMEND.render(preference=pref, title=self.title[item], description=self.description[item])

    def prompt_image(self, user: int, item: int) -> str:
        """The text of the image prompt (:data:`RECOMMEND_IMAGE`); the item's image follows it."""
        self.prompt(user, item)  # the same check of the summary
        return RECOMMEND_IMAGE.render(preference=self.preference[user], title=self.title[item])

    def prompts(self, user: int, items: np.ndarray) -> list[str]:
        return [self.prompt(int(user), int(i)) for i in items]


def _clean(s: object) -> str:
    return " ".join(str(s or "").split())


def load_preferences(ds: DatasetDir, users: np.ndarray | None = None, max_chars: int = 1500) -> np.ndarray:
    """Preference summaries per user id from ``DATA/enrich/user-preference.parquet`` (status ok).

    Raises
    ------
    InputError
        The file is missing, or one of ``users`` has no usable summary (naming the first such user).
    """
    path = Path(ds.path) / "enrich" / "user-preference.parquet"
    if not path.exists():
        raise InputError("no user-preference summaries; run `mmseqrec enrich DATA --task user-preference "
                         "--mode recurrent` first", file=path)
    df = pl.read_parquet(path)
    for col in ("user", "text", "status"):
        if col not in df.columns:
            raise InputError("missing column (expected user, text, status)", file=path, field=col)
    ok = df.filter((pl.col("status") == "ok") & pl.col("text").is_not_null())
    pref = np.full(ds.n_users + 1, None, dtype=object)
    pref[ok["user"].to_numpy()] = np.asarray([_clean(t)[:max_chars] for t in ok["text"].to_list()] + [None],
                                             dtype=object)[:-1]
    if users is not None:
        users = np.asarray(users, dtype=np.int64)
        missing = users[np.asarray([pref[u] is None or not pref[u] for u in users], dtype=bool)]
        if missing.size:
            raise InputError(f"{missing.size} user(s) of the candidate file have no preference summary (first: "
                             f"user {int(missing[0])}); run `mmseqrec enrich DATA --task user-preference` for them",
                             file=path, field="text")
    return pref


def item_titles(ds: DatasetDir) -> np.ndarray:
    """Cleaned title per item id (index 0 = padding, empty)."""
    items = ds.items.sort("item")
    title = np.full(ds.n_items + 1, "", dtype=object)
    if "title" in items.columns:
        title[items["item"].to_numpy()] = np.asarray(
            [_clean(t) for t in items["title"].cast(pl.Utf8).fill_null("").to_list()] + [None], dtype=object)[:-1]
    return title


def load_prompt_texts(ds: DatasetDir, users: np.ndarray | None = None, max_desc_chars: int = 600) -> PromptTexts:
    """Preferences (checked for ``users``), titles and descriptions of ``ds``."""
    pref = load_preferences(ds, users)
    title = item_titles(ds)
    desc, desc_source = item_descriptions(ds, max_desc_chars)
    desc = np.asarray([_clean(d) for d in desc], dtype=object)
    return PromptTexts(pref, title, desc, {"preference": "enrich/user-preference.parquet",
                                           "description": desc_source, "template": f"{RECOMMEND.id}@"
                                           f"{RECOMMEND.version}"})
