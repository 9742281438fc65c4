"""Enrichment tasks and their versioned prompt templates.

A :class:`PromptTemplate` is an id, a version and a text with named ``{placeholders}``; the rendered text is
stored with every output. Templates copied from a paper's released code are marked ``exact``; those written
here because the paper gives no prompt are marked ``reconstructed``. Changing a template's text requires a
new version (the version is part of the cache key, so old outputs are never confused with new ones).

Tasks (named on the command line):

``item-description``
    From the image, with MLLM-MSR's image prompt (``mllm-msr/image-summary``). Items without a usable image
    fall back to a text prompt (the reason is recorded).
``item-summary``
    From the item text (MLLM-MSR describes a text summariser but releases no prompt: reconstructed).
``item-views``
    DMESR's three-way prompting: the item from its image alone, its text alone, and both together (one output
    row per item per view, ``view`` in {image, text, both}; reconstructed). The image and both views of an item
    without a usable image are *skipped* with the reason (never generated from the text prompt).
``item-keywords``
    MMSRARec's keyword summaries, image and text summarised separately to avoid modality bias (``view`` in
    {image, text}; reconstructed: the paper's prompt table is an unreadable image). Image view as above.
``user-preference``
    MLLM-MSR's recurrent preference summariser over blocks of ``k`` training items (``--mode recurrent``), or
    one prompt over the whole training history (``--mode direct``, the MLLM-MSR_R ablation).
``user-profile``
    A preference profile over the chronological list of item descriptions (``mllmrec/user-profile`` v1,
    reconstructed before MLLMRec's prompts were public; kept under its name and version).
``mllmrec-item-description``
    MLLMRec's image-to-text step with its released prompt (``reasoning/5image2text.py``; exact). Items without
    an image get no description, as in the reference (skipped, reason recorded); the answer's last line is
    kept, as the reference does.
``mllmrec-user-preference``
    MLLMRec's preference generation with its released prompt (``reasoning/6preference-generation.py``;
    exact): the Python list of the user's combined item descriptions (title, brand, categories, description and
    the ``mllmrec-item-description`` output, concatenated as the reference does).

User-level tasks read only each user's *training* prefix of the leave-one-out split: validation and test
items never enter a prompt. MLLMRec's released code builds its profiles from the whole ``.inter`` file
(validation and test items included; MLLMRec issue #6 shows how much that inflates results); that variant
exists only as ``mllmrec-user-preference`` with the option ``profile_source: all-interactions``, whose output
is written under its own name (``mllmrec-user-preference.all-interactions.parquet``).
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl

from ..data.dataset import DatasetDir
from ..data.split import leave_one_out

__all__ = [
    "TASKS",
    "TEMPLATES",
    "Job",
    "PromptTemplate",
    "Step",
    "TaskOptions",
    "default_image_kind",
    "is_item_task",
    "item_descriptions",
    "item_texts",
    "mllmrec_item_descriptions",
    "output_name",
    "plan_task",
]


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt: ``render(**fields)`` fills the named placeholders."""

    id: str
    version: str
    text: str
    origin: Literal["exact", "adapted", "reconstructed"]
    source: str
    notes: str = ""
    keep: Literal["all", "last-line"] = "all"  # what of the answer is stored (MLLMRec image2text: last line)

    @property
    def fields(self) -> list[str]:
        return [f for _, f, _, _ in string.Formatter().parse(self.text) if f]

    def render(self, **values: str) -> str:
        missing = [f for f in self.fields if f not in values]
        if missing:
            raise KeyError(f"template {self.id} needs {missing}")
        return self.text.format_map(values)

    def clean(self, answer: str | None) -> str | None:
        """The stored part of a model answer (``keep: last-line``: ``answer.split("\\n")[-1].strip()``)."""
        if answer is None or self.keep == "all":
            return answer
        return answer.split("\n")[-1].strip()

    def metadata(self) -> dict[str, str]:
        return {"id": self.id, "version": self.version, "origin": self.origin, "source": self.source,
                "notes": self.notes, "text": self.text, "keep": self.keep}


_MSR_PREF_TAIL = (
    "please summarize the user's preferences in one continuous paragraph. Only provide information about the "
    "user's preferences; do not repeat details about the previously watched videos. Do not repeat the question "
    "in your answer, and keep clear and concise.The answer should start with 'The user appears to have a "
    "preference for'."
)

_T = [
    PromptTemplate(
        "mllm-msr/image-summary", "1",
        "Please describe this image, which is {image_kind}. Provide a detailed description in one continuous "
        "paragraph, including content information and visual features such as colors, objects, text, and any "
        "notable elements present in the image.",
        "exact", "MLLM-MSR Inference/microlens/image_summary.py",
        "exact with image_kind='a cover of a video' (MicroLens; pass --image-kind); the default image_kind is "
        "derived from the dataset (default_image_kind); the LLaVA-Mistral '[INST] <image>\\n ... "
        "[/INST]' wrapper is replaced by the model's own chat template",
    ),
    PromptTemplate(
        "mmseqrec/description-from-text", "1",
        "The image of this item is not available. Based on its title and text, describe the item in one "
        "continuous paragraph, including its content and the visual features it is likely to have.\n"
        "Title: {title}\nText: {text}",
        "reconstructed", "mmseqrec (text fallback for image prompts)",
    ),
    PromptTemplate(
        "mllm-msr/text-summary", "1",
        "Below is the text of an item.\nTitle: {title}\nText: {text}\nPlease summarize this item in one "
        "continuous paragraph, keeping its content and key attributes. Do not repeat the question in your "
        "answer, and keep clear and concise.",
        "reconstructed", "MLLM-MSR paper (text summariser; prompt not released)",
    ),
    PromptTemplate(
        "dmesr/view-image", "1",
        "Please describe the item shown in this image in one continuous paragraph: what it is, its category, "
        "and its visual features such as colors, shapes, materials, style and any text in the image.",
        "reconstructed", "DMESR three-way prompting (image alone); prompts not published",
    ),
    PromptTemplate(
        "dmesr/view-text", "1",
        "Below is the textual information of an item.\nTitle: {title}\nText: {text}\nDescribe this item in "
        "one continuous paragraph: what it is, its category, its key attributes and who it is for.",
        "reconstructed", "DMESR three-way prompting (text alone); prompts not published",
    ),
    PromptTemplate(
        "dmesr/view-both", "1",
        "Here are an item's image and its textual information.\nTitle: {title}\nText: {text}\nUsing both the "
        "image and the text, describe this item in one continuous paragraph: what it is, its category, its "
        "visual features and its key attributes. Where image and text disagree, trust the text.",
        "reconstructed", "DMESR three-way prompting (image and text together); prompts not published",
    ),
    PromptTemplate(
        "mmsrarec/keywords-image", "1",
        "Summarize the item shown in this image as a short list of keywords (at most 8), separated by commas. "
        "Cover what the item is, its category and its salient visual features. Output only the keywords.",
        "reconstructed", "MMSRARec stage 1 (Table 1 is an image; prompt not readable)",
    ),
    PromptTemplate(
        "mmsrarec/keywords-text", "1",
        "Summarize the item described below as a short list of keywords (at most 8), separated by commas. "
        "Keep the name, category and key attributes. Output only the keywords.\nTitle: {title}\nText: {text}",
        "reconstructed", "MMSRARec stage 1 (Table 1 is an image; prompt not readable)",
    ),
    PromptTemplate(
        "mllm-msr/preference-first-block", "1",
        "Below is a chronological list of videos previously watched by User {user}:\n{items}"
        "Based on the content and visual style of videos listed above, " + _MSR_PREF_TAIL,
        "exact", "MLLM-MSR preferece_inference_recurrent.py (first block)",
        "the leading '[INST] ' of the original is dropped (the chat template supplies the turn markers); "
        "item lines: \"{k}. {item}: Title - '{title}', Video cover description - {visual_desc}.\\n\"",
    ),
    PromptTemplate(
        "mllm-msr/preference-next-block", "1",
        "Below is a chronological list of videos previously watched by User {user}:\n{items}"
        "We also know this user's previous preference.\n {last_preference}\n"
        "Based on the content and visual style of videos listed above as well as the known aspects of user's "
        "preference, " + _MSR_PREF_TAIL,
        "exact", "MLLM-MSR preferece_inference_recurrent.py (later blocks)",
        "the leading '[INST] ' of the original is dropped (the chat template supplies the turn markers)",
    ),
    PromptTemplate(
        "mllm-msr/preference-direct", "1",
        "Below is a chronological list of videos previously watched by User {user}:\n{items}"
        "Based on the content and visual style of videos listed above, " + _MSR_PREF_TAIL,
        "adapted", "MLLM-MSR preferece_inference_direct.py (MLLM-MSR_R ablation): first-block prompt over the "
        "whole history",
    ),
    PromptTemplate(
        "mllmrec/user-profile", "1",
        "Below is the chronologically ordered list of multimodal descriptions of the items a user interacted "
        "with:\n{items}Reason about what this user values and write the user's preference profile in one "
        "continuous paragraph. Describe the preferences only; do not list the items.",
        "reconstructed", "MLLMRec user preference generation (written before the reasoning code was public; "
        "the exact prompt is mllmrec/preference)",
    ),
    PromptTemplate(
        "mllmrec/image2text", "1",
        "Please convert the given image into an accurate and concise textual description relevant to the "
        "{category}, focusing on extracting key attributes that can influence the buying behavior of users, such "
        "as color, material, style, functionality, etc. To generate the textual description using a "
        "one-paragraph natural language overview in no more than 100 words.",
        "exact", "MLLMRec reasoning/5image2text.py (generate_image_description)",
        "exact with category='Clothing, Shoes & Jewelry', which the released script hard-codes for every dataset "
        "(Baby included); reference model gemma3:27b through ollama, default decoding",
        keep="last-line",
    ),
    PromptTemplate(
        "mllmrec/preference", "1",
        "Please reason about the user preferences based on the following list of item descriptions that he or "
        "she has interacted with. The list is: {descriptions}. To generate the user preferences using a "
        "one-paragraph natural language in no more than 100 words.",
        "exact", "MLLMRec reasoning/6preference-generation.py (prompt_template)",
        "{descriptions} is the Python repr of the list of the user's combined item descriptions, as the "
        "reference formats it; reference model gemma3:27b through ollama, default decoding",
    ),
]
TEMPLATES: dict[str, PromptTemplate] = {t.id: t for t in _T}

TASKS = ("item-description", "item-summary", "item-views", "item-keywords", "user-preference", "user-profile",
         "mllmrec-item-description", "mllmrec-user-preference")
MLLMREC_CATEGORY = "Clothing, Shoes & Jewelry"
ProfileSource = Literal["training", "all-interactions"]
_MSR_ITEM_LINE = "{k}. {item}: Title - '{title}', Video cover description - {visual_desc}.\n"
_TEXT_COLUMNS = ("brand", "categories", "description", "features", "text")

#: manifest ``format`` -> what an item image shows (fills MLLM-MSR's "this image, which is {image_kind}").
_IMAGE_KINDS = {
    "amazon2014": "a picture of a product", "amazon2018": "a picture of a product",
    "amazon2023": "a picture of a product", "synthetic": "a picture of a product",
    "movielens": "a poster of a movie",
}
NEUTRAL_IMAGE_KIND = "a picture of the item"


def default_image_kind(ds: DatasetDir) -> tuple[str, str]:
    """What the dataset's item images show, for ``--image-kind``: ``(kind, why)``.

    From the manifest format (Amazon and synthetic: products; MovieLens: movie posters), else the neutral
    "a picture of the item". MLLM-MSR's "a cover of a video" (MicroLens) is never assumed.
    """
    fmt = str(ds.manifest.get("format") or "")
    if fmt in _IMAGE_KINDS:
        return _IMAGE_KINDS[fmt], f"manifest format {fmt!r}"
    return NEUTRAL_IMAGE_KIND, f"neutral (manifest format {fmt or 'not recorded'!r})"


@dataclass
class TaskOptions:
    """What a task needs beyond the dataset (filled from the enrich config)."""

    mode: Literal["recurrent", "direct"] = "recurrent"
    block_size: int = 3
    max_history: int = 20
    image_kind: str = NEUTRAL_IMAGE_KIND
    max_text_chars: int = 1500
    limit: int | None = None
    only: frozenset[int] | None = None  # item (or user) ids to generate; the other rows are skipped
    category: str = MLLMREC_CATEGORY
    profile_source: ProfileSource = "training"


@dataclass
class Step:
    """One generation: the template, its rendered prompt, an optional image and a text fallback.

    A step with an image and no ``fallback`` needs the image: without a usable one it is skipped (image views).
    """

    template: PromptTemplate
    prompt: str
    image_ref: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    fallback: tuple[PromptTemplate, str] | None = None
    note: str | None = None  # e.g. "text fallback: no image" decided at planning time
    fallback_context: dict[str, str] | None = None  # context of the text fallback (default: ``context``)


@dataclass
class Job:
    """One output row. ``steps(r, previous_text)`` returns step ``r`` (recurrent tasks chain their steps)."""

    row: dict[str, object]
    n_steps: int
    make_step: Callable[[int, str | None], Step]
    skip_reason: str | None = None
    beyond_limit: bool = False


def item_texts(items: pl.DataFrame, max_chars: int = 1500) -> list[str]:
    """The non-title text fields of each item (``"brand: ...; categories: ...; ..."``), vectorised in polars."""
    parts = []
    for col in _TEXT_COLUMNS:
        if col not in items.columns:
            continue
        e = pl.col(col)
        dt = items.schema[col]
        if isinstance(dt, (pl.List, pl.Array)):
            e = e.cast(pl.List(pl.Utf8)).list.join(", ")
        elif dt != pl.Utf8:
            e = e.cast(pl.Utf8)
        e = e.str.strip_chars()
        parts.append(pl.when(e.str.len_chars() > 0).then(pl.lit(f"{col}: ") + e).otherwise(None))
    if not parts:
        return [""] * items.height
    out = items.select(pl.concat_str(parts, separator="; ", ignore_nulls=True).fill_null("").alias("t"))["t"]
    return [s[:max_chars] for s in out.to_list()]


def _items_sorted(ds: DatasetDir) -> pl.DataFrame:
    return ds.items.sort("item")


def item_descriptions(ds: DatasetDir, max_chars: int = 600) -> tuple[np.ndarray, str]:
    """Per item id (index 0 = padding) the best available description for user-level prompts.

    Uses ``enrich/item-description.parquet`` (status ok) when it exists, else the item's own text, else the
    title. Returns ``(descriptions, source)``.
    """
    items = _items_sorted(ds)
    ids = items["item"].to_numpy()
    titles = items["title"].cast(pl.Utf8).fill_null("").to_list() if "title" in items.columns else [""] * len(ids)
    texts = item_texts(items, max_chars)
    desc = np.full(ds.n_items + 1, "", dtype=object)
    desc[ids] = np.asarray([t or ti for t, ti in zip(texts, titles, strict=True)] + [None], dtype=object)[:-1]
    source = "items text"
    p = ds.path / "enrich" / "item-description.parquet"
    if p.exists():
        df = pl.read_parquet(p, columns=["item", "text", "status"]).filter(
            (pl.col("status") == "ok") & pl.col("text").is_not_null())
        if df.height:
            desc[df["item"].to_numpy()] = np.asarray(
                [t[:max_chars] for t in df["text"].to_list()] + [None], dtype=object)[:-1]
            source = "enrich/item-description.parquet (items text where missing)"
    return desc, source


def _clean(s: str) -> str:
    return " ".join(str(s).split())


def _item_jobs(ds: DatasetDir, task: str, opt: TaskOptions) -> list[Job]:
    items = _items_sorted(ds)
    ids = items["item"].to_list()
    titles = [_clean(t) for t in items["title"].cast(pl.Utf8).fill_null("").to_list()] \
        if "title" in items.columns else [""] * len(ids)
    texts = [_clean(t) for t in item_texts(items, opt.max_text_chars)]
    images = items["image"].cast(pl.Utf8).to_list() if "image" in items.columns else [None] * len(ids)
    T = TEMPLATES
    fb_desc = T["mmseqrec/description-from-text"]
    jobs: list[Job] = []

    def image_step(tpl: PromptTemplate, fields: dict, fb: PromptTemplate, ctx: dict, ref: str | None) -> Step:
        """An image prompt with a text fallback (item descriptions)."""
        fb_pair = (fb, fb.render(**ctx))
        if not ref or not str(ref).strip():
            return Step(fb_pair[0], fb_pair[1], None, ctx, None, note="text fallback: no image")
        return Step(tpl, tpl.render(**fields), str(ref), ctx, fb_pair, fallback_context=ctx)

    def view_job(item: int, view: str, tpl: PromptTemplate, fields: dict, ctx: dict, ref: str | None,
                 image_only: bool) -> Job:
        """A view that needs the image (no text fallback: skipped without one). ``image_only`` views ("from the
        image alone") carry no item text for text-grounded backends, so they never leak the text view."""
        if not ref or not str(ref).strip():
            return Job({"item": item, "view": view}, 0, lambda r, p: None, skip_reason="no image")
        st = Step(tpl, tpl.render(**fields), str(ref), {} if image_only else ctx)
        return Job({"item": item, "view": view}, 1, lambda r, p, st=st: st)

    def text_job(item: int, view: str, tpl: PromptTemplate, ctx: dict) -> Job:
        st = Step(tpl, tpl.render(**ctx), None, ctx)
        return Job({"item": item, "view": view}, 1, lambda r, p, st=st: st)

    for item, title, text, ref in zip(ids, titles, texts, images, strict=True):
        ctx = {"title": title, "text": text or "unknown"}
        if task == "item-description":
            st = image_step(T["mllm-msr/image-summary"], {"image_kind": opt.image_kind}, fb_desc, ctx, ref)
            jobs.append(Job({"item": item}, 1, lambda r, p, st=st: st))
        elif task == "item-summary":
            tpl = T["mllm-msr/text-summary"]
            st = Step(tpl, tpl.render(**ctx), None, ctx)
            jobs.append(Job({"item": item}, 1, lambda r, p, st=st: st))
        elif task == "item-views":
            jobs += [view_job(item, "image", T["dmesr/view-image"], {}, ctx, ref, image_only=True),
                     text_job(item, "text", T["dmesr/view-text"], ctx),
                     view_job(item, "both", T["dmesr/view-both"], ctx, ctx, ref, image_only=False)]
        elif task == "mllmrec-item-description":
            # as the reference: no image (or an unreadable one) -> no description (skipped, reason recorded)
            if not ref or not str(ref).strip():
                jobs.append(Job({"item": item}, 0, lambda r, p: None,
                                skip_reason="no image (MLLMRec describes images only)"))
            else:
                tpl = T["mllmrec/image2text"]
                st = Step(tpl, tpl.render(category=opt.category), str(ref), {})
                jobs.append(Job({"item": item}, 1, lambda r, p, st=st: st))
        elif task == "item-keywords":
            jobs += [view_job(item, "image", T["mmsrarec/keywords-image"], {}, ctx, ref, image_only=True),
                     text_job(item, "text", T["mmsrarec/keywords-text"], ctx)]
        else:  # pragma: no cover - guarded by plan_task
            raise ValueError(task)
    return jobs


def _text_column(items: pl.DataFrame, col: str, list_sep: str) -> list[str]:
    """One items column as strings (lists joined by ``list_sep``; missing -> ``" "``, the reference's fillna)."""
    if col not in items.columns:
        return [" "] * items.height
    e = pl.col(col)
    if isinstance(items.schema[col], (pl.List, pl.Array)):
        e = e.cast(pl.List(pl.Utf8)).list.join(list_sep)
    e = e.cast(pl.Utf8)
    return items.select(pl.when(e.str.len_chars() > 0).then(e).otherwise(pl.lit(" ")).alias("v"))["v"].to_list()


def mllmrec_item_descriptions(ds: DatasetDir) -> tuple[np.ndarray, str]:
    """Per item id (index 0 = padding) MLLMRec's ``combined_description``: ``title + " " + brand + " " +
    (category + " " for each category) + description + image_description``, newlines as spaces, missing
    fields as ``" "`` (``reasoning/6preference-generation.py``). The image description is the ``ok`` output of
    ``enrich/mllmrec-item-description.parquet`` when it exists. Categories: the item's list (or its
    ``", "``-separated string); the reference takes its first category path."""
    items = _items_sorted(ds)
    title, brand = _text_column(items, "title", ", "), _text_column(items, "brand", ", ")
    desc = _text_column(items, "description", ", ")
    if "categories" in items.columns:
        e = pl.col("categories")
        if not isinstance(items.schema["categories"], (pl.List, pl.Array)):
            e = e.cast(pl.Utf8).str.split(", ")
        cats = items.select(e.cast(pl.List(pl.Utf8)).alias("c"))["c"].to_list()
    else:
        cats = [None] * items.height
    image = np.full(ds.n_items + 1, " ", dtype=object)
    source = "items table (no mllmrec-item-description output)"
    p = ds.path / "enrich" / "mllmrec-item-description.parquet"
    if p.exists():
        df = pl.read_parquet(p, columns=["item", "text", "status"]).filter(
            (pl.col("status") == "ok") & pl.col("text").is_not_null())
        image[df["item"].to_numpy()] = np.asarray(df["text"].to_list() + [None], dtype=object)[:-1]
        source = "items table + enrich/mllmrec-item-description.parquet"
    ids = items["item"].to_numpy()
    out = np.full(ds.n_items + 1, "", dtype=object)
    for k, i in enumerate(ids):
        sen = title[k] + " " + brand[k] + " " + "".join(c + " " for c in (cats[k] or []) if c is not None)
        out[i] = (sen + desc[k] + image[i]).replace("\n", " ")
    return out, source


def _user_histories(ds: DatasetDir, opt: TaskOptions):
    """``user -> item ids`` used by a user task: the training prefix of the leave-one-out split (default) or
    every interaction (``profile_source: all-interactions``, MLLMRec's leak), the last ``max_history``."""
    seqs = ds.sequences
    split = leave_one_out(seqs)

    def hist(u: int) -> np.ndarray:
        h = split.train_sequence(u) if opt.profile_source == "training" else \
            seqs.items[seqs.indptr[u]: seqs.indptr[u + 1]]
        return h[-opt.max_history:] if opt.max_history > 0 else h
    return hist


def _mllmrec_preference_jobs(ds: DatasetDir, opt: TaskOptions) -> tuple[list[Job], str]:
    desc, source = mllmrec_item_descriptions(ds)
    tpl = TEMPLATES["mllmrec/preference"]
    hist = _user_histories(ds, opt)
    jobs: list[Job] = []
    for u in range(1, ds.n_users + 1):
        h = hist(u)
        if h.size == 0:
            jobs.append(Job({"user": u}, 0, lambda r, p: None, skip_reason="no training interactions"))
            continue
        items = [str(desc[int(i)]) for i in h]
        st = Step(tpl, tpl.render(descriptions=repr(items)), None, {"descriptions": " | ".join(items)})
        jobs.append(Job({"user": u}, 1, lambda r, p, st=st: st))
    return jobs, source


def _user_jobs(ds: DatasetDir, task: str, opt: TaskOptions) -> tuple[list[Job], str]:
    split = leave_one_out(ds.sequences)
    desc, desc_source = item_descriptions(ds)
    items = _items_sorted(ds)
    title = np.full(ds.n_items + 1, "", dtype=object)
    title[items["item"].to_numpy()] = np.asarray(
        [_clean(t) for t in items["title"].cast(pl.Utf8).fill_null("").to_list()] + [None], dtype=object)[:-1]
    orig = ds.item_ids()
    users = ds.users
    user_names = np.asarray([""] * (ds.n_users + 1), dtype=object)
    if users is not None and "user_id" in users.columns:
        user_names[users["user"].to_numpy()] = np.asarray(users["user_id"].cast(pl.Utf8).to_list() + [None],
                                                          dtype=object)[:-1]
    jobs: list[Job] = []
    for u in range(1, ds.n_users + 1):
        hist = split.train_sequence(u)[-opt.max_history:] if opt.max_history > 0 else split.train_sequence(u)
        uname = str(user_names[u] or u)
        if hist.size == 0:
            jobs.append(Job({"user": u}, 0, lambda r, p: None, skip_reason="no training interactions"))
            continue
        if task == "user-preference":
            def line(k: int, i: int) -> str:
                return _MSR_ITEM_LINE.format(k=k, item=orig[i], title=title[i], visual_desc=_clean(desc[i]))
            if opt.mode == "direct":
                blocks = [hist]
            else:
                blocks = [hist[s : s + opt.block_size] for s in range(0, hist.size, opt.block_size)]

            def make(r: int, prev: str | None, blocks=blocks, uname=uname, line=line) -> Step:
                lines = "".join(line(k + 1, int(i)) for k, i in enumerate(blocks[r]))
                ctx = {"titles": "; ".join(str(title[int(i)]) for i in blocks[r])}
                if opt.mode == "direct":
                    tpl = TEMPLATES["mllm-msr/preference-direct"]
                    return Step(tpl, tpl.render(user=uname, items=lines), None, ctx)
                if r == 0:
                    tpl = TEMPLATES["mllm-msr/preference-first-block"]
                    return Step(tpl, tpl.render(user=uname, items=lines), None, ctx)
                tpl = TEMPLATES["mllm-msr/preference-next-block"]
                ctx["previous"] = prev or ""
                return Step(tpl, tpl.render(user=uname, items=lines, last_preference=prev or ""), None, ctx)

            jobs.append(Job({"user": u}, len(blocks), make))
        else:  # user-profile
            tpl = TEMPLATES["mllmrec/user-profile"]
            lines = "".join(f"{k + 1}. {title[int(i)]}: {_clean(desc[int(i)])}\n" for k, i in enumerate(hist))
            st = Step(tpl, tpl.render(items=lines), None,
                      {"titles": "; ".join(str(title[int(i)]) for i in hist)})
            jobs.append(Job({"user": u}, 1, lambda r, p, st=st: st))
    return jobs, desc_source


def is_item_task(task: str) -> bool:
    """Whether ``task`` writes one row per item (else one per user)."""
    return task.startswith("item-") or task == "mllmrec-item-description"


def output_name(task: str, profile_source: str = "training") -> str:
    """File stem of a task's outputs: the leaky variant never shares a name with the training-only one."""
    return task if profile_source == "training" else f"{task}.{profile_source}"


def plan_task(ds: DatasetDir, task: str, opt: TaskOptions) -> tuple[list[Job], dict[str, str]]:
    """The jobs (one per output row) of ``task`` on ``ds``, plus notes for the summary."""
    if task not in TASKS:
        from ..errors import InputError

        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}", field="--task")
    item_task = is_item_task(task)
    if opt.profile_source != "training" and task != "mllmrec-user-preference":
        from ..errors import InputError

        raise InputError("profile_source: all-interactions exists only for mllmrec-user-preference (MLLMRec's "
                         "released behaviour)", field="--profile-source")
    if item_task:
        jobs, notes = _item_jobs(ds, task, opt), {}
    else:
        if task == "mllmrec-user-preference":
            jobs, src = _mllmrec_preference_jobs(ds, opt)
        else:
            jobs, src = _user_jobs(ds, task, opt)
        history = ("training prefix of leave_one_out (valid/test excluded)" if opt.profile_source == "training"
                   else "ALL interactions, validation and test items included (MLLMRec's released code; leaks "
                   "the evaluation targets into the profile)")
        notes = {"item_descriptions": src, "history": history, "profile_source": opt.profile_source,
                 "max_history": str(opt.max_history)}
    key = "item" if item_task else "user"
    if opt.only is not None:  # keep every row (aligned to the vocabulary); unlisted ids are skipped
        unknown = sorted(opt.only - {int(job.row[key]) for job in jobs})
        if unknown:
            from ..errors import InputError

            raise InputError(f"--only lists {len(unknown)} {key} id(s) this task does not plan, e.g. {unknown[0]} "
                             f"(the dataset's internal {key} ids, as `mmseqrec llmrec keyword-items` writes them)",
                             file=ds.path, field="--only")
        for job in jobs:
            if int(job.row[key]) not in opt.only:
                job.n_steps, job.skip_reason = 0, "not in --only"
                job.beyond_limit = True
    if opt.limit is not None:  # keep every row (aligned to the vocabulary); rows past the limit are skipped
        seen: list[object] = []
        for job in jobs:
            if job.beyond_limit:  # not in --only: the limit counts listed ids only
                continue
            rid = job.row[key]
            if rid not in seen[-1:]:
                seen.append(rid)
            if len(seen) > opt.limit:
                job.n_steps, job.skip_reason = 0, "beyond --limit"
                job.beyond_limit = True
    return jobs, notes
