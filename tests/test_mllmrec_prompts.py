"""MLLMRec's released prompts in the task registry: wording as in ``reasoning/5image2text.py`` and
``reasoning/6preference-generation.py``, the combined item descriptions, the training-only default (no validation
or test item in any profile) and the leaky variant only under its own name."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from helpers import write_cycle_dataset

from mmseqrec.data import DatasetDir
from mmseqrec.data.split import leave_one_out
from mmseqrec.enrich import tasks
from mmseqrec.enrich.backends import BackendConfig
from mmseqrec.enrich.runner import EnrichConfig, run_enrich
from mmseqrec.enrich.tasks import TEMPLATES, TaskOptions, mllmrec_item_descriptions, plan_task
from mmseqrec.errors import InputError

# the reference wording, typed from the released scripts
REF_IMAGE = ("Please convert the given image into an accurate and concise textual description relevant to the "
             "Clothing, Shoes & Jewelry, focusing on extracting key attributes that can influence the buying "
             "behavior of users, such as color, material, style, functionality, etc. To generate the textual "
             "description using a one-paragraph natural language overview in no more than 100 words.")
REF_PREF = ("Please reason about the user preferences based on the following list of item descriptions that he "
            "or she has interacted with. The list is: {descriptions}. To generate the user preferences using a "
            "one-paragraph natural language in no more than 100 words.")


@pytest.fixture()
def data_dir(tmp_path) -> Path:
    root = write_cycle_dataset(tmp_path / "ds", n_users=8, n_items=15, seq_len=6)
    items = pl.read_parquet(root / "items.parquet")
    items = items.with_columns(pl.Series("brand", [f"Brand{i}" if i % 2 else None for i in range(15)]),
                               pl.Series("categories", [["Baby", f"Cat{i}"] for i in range(15)]),
                               pl.Series("description", [f"Desc-{i + 1}\nline two" for i in range(15)]))
    items.write_parquet(root / "items.parquet")
    return root


def _ref_combined(title, brand, cats, desc, image_desc):
    """Reference ``combined_description`` (missing fields are ``" "`` after ``fillna(" ")``)."""
    sen = title + " " + brand + " "
    for c in cats:
        sen = sen + c + " "
    sen += desc
    sen += image_desc
    return sen.replace("\n", " ")


def _listed(prompt: str) -> list[str]:
    start = prompt.index("The list is: ") + len("The list is: ")
    end = prompt.rindex(". To generate the user preferences")
    return ast.literal_eval(prompt[start:end])


def test_prompts_match_the_reference_wording():
    img = TEMPLATES["mllmrec/image2text"]
    assert img.render(category="Clothing, Shoes & Jewelry") == REF_IMAGE
    assert img.origin == "exact" and img.keep == "last-line" and img.version == "1"
    pref = TEMPLATES["mllmrec/preference"]
    assert pref.text == REF_PREF and pref.origin == "exact"
    descriptions = ["a b", "it's c"]
    assert pref.render(descriptions=repr(descriptions)) == REF_PREF.format(descriptions=descriptions)
    # the reconstructed template keeps its name, version and origin
    old = TEMPLATES["mllmrec/user-profile"]
    assert (old.version, old.origin) == ("1", "reconstructed")
    assert "unreleased" not in inspect.getsource(tasks)
    assert img.clean("Sure! Here it is:\n  A red dress. ") == "A red dress."


def test_combined_descriptions_follow_the_reference(data_dir):
    ds = DatasetDir(data_dir)
    desc, _ = mllmrec_item_descriptions(ds)
    assert desc[2] == _ref_combined("Item 2", "Brand1", ["Baby", "Cat1"], "Desc-2\nline two", " ")
    assert desc[1] == _ref_combined("Item 1", " ", ["Baby", "Cat0"], "Desc-1\nline two", " ")
    # an image description from the mllmrec-item-description output is appended as the reference does
    (Path(data_dir) / "enrich").mkdir()
    pl.DataFrame({"item": [2], "text": ["Red."], "status": ["ok"]}).write_parquet(
        Path(data_dir) / "enrich" / "mllmrec-item-description.parquet")
    desc, src = mllmrec_item_descriptions(DatasetDir(data_dir))
    assert desc[2].endswith("line twoRed.") and "mllmrec-item-description" in src


def test_training_only_profiles_never_see_validation_or_test_items(data_dir):
    ds = DatasetDir(data_dir)
    desc, _ = mllmrec_item_descriptions(ds)
    split = leave_one_out(ds.sequences)
    seqs = ds.sequences
    jobs, notes = plan_task(ds, "mllmrec-user-preference", TaskOptions(max_history=0))
    assert notes["profile_source"] == "training"
    for u, job in enumerate(jobs, 1):
        listed = _listed(job.make_step(0, None).prompt)
        full = seqs.items[seqs.indptr[u]: seqs.indptr[u + 1]]
        train = split.train_sequence(u)
        held_out = set(full.tolist()) - set(train.tolist())
        assert len(held_out) == 2  # validation and test item
        assert listed == [desc[int(i)] for i in train]
        assert not any(desc[i] in listed for i in held_out)
    # the leaky variant, only by name: the held-out items are in the profile
    leaky, notes = plan_task(ds, "mllmrec-user-preference", TaskOptions(max_history=0,
                                                                        profile_source="all-interactions"))
    assert "validation and test items included" in notes["history"]
    full = seqs.items[seqs.indptr[1]: seqs.indptr[2]]
    assert _listed(leaky[0].make_step(0, None).prompt) == [desc[int(i)] for i in full]
    with pytest.raises(InputError, match="only for mllmrec-user-preference"):
        plan_task(ds, "user-profile", TaskOptions(profile_source="all-interactions"))


def test_runner_writes_the_leaky_variant_under_its_own_name(data_dir):
    be = BackendConfig(backend="echo")
    run_enrich(data_dir, EnrichConfig(task="mllmrec-user-preference", backend=be, max_history=0), progress=False)
    run_enrich(data_dir, EnrichConfig(task="mllmrec-user-preference", backend=be, max_history=0,
                                      profile_source="all-interactions"), progress=False)
    out = Path(data_dir) / "enrich"
    clean = pl.read_parquet(out / "mllmrec-user-preference.parquet")
    leaky = pl.read_parquet(out / "mllmrec-user-preference.all-interactions.parquet")
    assert clean.height == leaky.height == 8 and (clean["status"] == "ok").all()
    assert (clean["template_id"] == "mllmrec/preference").all()
    assert clean["prompt"][0] != leaky["prompt"][0]
    # items without an image get no MLLMRec description (skipped with the reason)
    res = run_enrich(data_dir, EnrichConfig(task="mllmrec-item-description", backend=be), progress=False)
    df = pl.read_parquet(res.parquet)
    assert (df["status"] == "skipped").all() and df["reason"][0].startswith("no image")
    assert np.array_equal(df["item"].to_numpy(), np.arange(1, 16))
