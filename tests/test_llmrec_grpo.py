"""GRPO tuning of the MMSRARec keyword summariser with TRL's ``GRPOTrainer`` on a tiny random causal LM (CPU,
no hub): the reward TRL optimises is alpha R_info + beta R_recon + gamma R_len of the completions, one step changes
the weights, the tuned model is saved and loads through ``from_pretrained``; ``enrich --tune grpo`` end to end."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from helpers import run_cli, write_cycle_dataset

pytest.importorskip("trl")

from mmseqrec.llmrec.grpo import GRPOTuneConfig, keyword_reward_funcs, tune_keywords_grpo
from mmseqrec.llmrec.random_lm import build_random_lm
from mmseqrec.llmrec.rewards import reward_info, reward_recon


def _bag_of_letters(xs: list[str]) -> np.ndarray:
    """A stand-in for phi: letter counts (a..z) + 1."""
    out = np.ones((len(xs), 26))
    for r, x in enumerate(xs):
        for ch in x.lower():
            if "a" <= ch <= "z":
                out[r, ord(ch) - 97] += 1
    return out


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_random_lm(tmp_path_factory.mktemp("lm") / "tiny", seed=5)


def test_reward_funcs_are_the_terms_on_the_completion_text(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32).eval()
    r_info, r_recon, r_len = keyword_reward_funcs(_bag_of_letters, model, tok)
    comps = [[{"role": "assistant", "content": "red, cup, ,"}], [{"role": "assistant", "content": "toy"}]]
    refs = ["a red cup", "a toy car"]
    kws = ["red, cup, ,", "toy"]
    assert r_len(prompts=None, completions=comps) == [-2.0, -1.0]
    assert r_info(prompts=None, completions=comps, reference=refs) == pytest.approx(
        reward_info(kws, refs, _bag_of_letters).tolist())
    assert r_recon(prompts=None, completions=comps, reference=refs) == pytest.approx(
        reward_recon(kws, refs, model, tok).tolist())
    # by hand for R_info of the second pair: toy = {t, o, y}; "a toy car" = {a:2, t, o, y, c, r}
    a = np.ones(26)
    b = np.ones(26)
    for ch in "toy":
        a[ord(ch) - 97] += 1
    for ch in "atoycar":
        b[ord(ch) - 97] += 1
    assert r_info(prompts=None, completions=comps[1:], reference=refs[1:])[0] == pytest.approx(
        float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert r_len(prompts=None, completions=["a, b, c"]) == [-3.0]  # plain (non-chat) completions too


def test_one_grpo_step_optimises_the_weighted_reward_and_saves_the_tuned_model(tmp_path, lm_dir):
    from transformers import AutoModelForCausalLM

    cfg = GRPOTuneConfig(steps=1, items=2, prompts_per_step=2, num_generations=2, max_completion_length=6,
                         lr=5e-2, lora_r=2, alpha=2.0, beta=0.5, gamma=3.0)
    out = tmp_path / "tuned"
    rec = tune_keywords_grpo(lm_dir, ["Keywords of: red cup", "Keywords of: toy car"], ["a red cup", "a toy car"],
                             out, cfg, embed=_bag_of_letters)
    (step,) = rec["steps"]
    terms = {k: step[f"rewards/r_{k}/mean"] for k in ("info", "recon", "len")}
    # TRL's reward is the weighted sum of the three terms (per completion, so also on the means)
    assert step["reward"] == pytest.approx(2.0 * terms["info"] + 0.5 * terms["recon"] + 3.0 * terms["len"],
                                           rel=1e-4, abs=1e-4)
    assert -1.0 <= terms["info"] <= 1.0 and terms["recon"] < 0 and terms["len"] <= 0
    assert step["grad_norm"] > 0
    # the merged model loads through from_pretrained and differs from the base after one step
    base = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    b, t = base.state_dict(), tuned.state_dict()
    assert set(b) == set(t)
    assert any(not torch.equal(b[k], t[k]) for k in b)
    saved = json.loads((out / "grpo.json").read_text())
    assert saved["config"]["alpha"] == 2.0 and saved["n_prompts"] == 2
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    with pytest.raises(FileExistsError):  # a tuned model is never overwritten
        tune_keywords_grpo(lm_dir, ["x"], ["y"], out, cfg, embed=_bag_of_letters)


def test_enrich_tune_grpo_end_to_end(tmp_path, lm_dir):
    data = write_cycle_dataset(tmp_path / "data", n_users=6, n_items=8, seq_len=4)
    base = ["enrich", str(data), "--task", "item-keywords", "--backend", "transformers", "--model", str(lm_dir),
            "--limit", "3", "--max-new-tokens", "4", "--no-progress", "--tune", "grpo", "--tune-steps", "1",
            "--tune-items", "2"]
    assert 2 == run_cli([*base[:3], "item-summary", *base[4:]])  # only the keyword task is tuned
    assert 2 == run_cli([*base, "--reward-weights", "1,2"])
    assert 2 == run_cli([*base[:4], "--backend", "echo", *base[8:]])  # no local model to tune
    assert 2 == run_cli([*base, "--tune-steps", "0"])
    assert not (data / "enrich" / "models").exists()
    assert 0 == run_cli(base)
    (tuned,) = (data / "enrich" / "models").iterdir()
    assert tuned.name.startswith("item-keywords-grpo-") and (tuned / "grpo.json").exists()
    held = json.loads((tuned / "grpo.json").read_text())["heldout"]
    # 8 items, 2 tuned on: the other 6 are held out, scored with the base and with the tuned model
    assert held["before"]["n"] == held["after"]["n"] == 6
    for side in ("before", "after"):
        h = held[side]
        assert h["reward"] == pytest.approx(h["r_info"] + 0.01 * h["r_recon"] + 0.05 * h["r_len"])
    df = pl.read_parquet(data / "enrich" / "item-keywords.parquet")
    text = df.filter((pl.col("view") == "text") & (pl.col("status") != "skipped"))  # --limit 3
    assert text.height == 3 and set(text["model_id"].to_list()) == {str(tuned)}
    stamp = (tuned / "model.safetensors").stat().st_mtime_ns
    assert 0 == run_cli(base)  # same command: the tuned model is reused, not trained again
    assert (tuned / "model.safetensors").stat().st_mtime_ns == stamp
    assert len(list((data / "enrich" / "models").iterdir())) == 1


def test_enrich_only_generates_the_listed_items(tmp_path):
    data = write_cycle_dataset(tmp_path / "data", n_users=6, n_items=8, seq_len=4)
    ids = tmp_path / "ids.txt"
    ids.write_text("2\n\n7\n")
    base = ["enrich", str(data), "--task", "item-keywords", "--backend", "echo", "--no-progress", "--only", str(ids)]
    assert 0 == run_cli(base)
    df = pl.read_parquet(data / "enrich" / "item-keywords.parquet").filter(pl.col("view") == "text")
    assert df.height == 8  # every item keeps its row
    assert sorted(df.filter(pl.col("status") == "ok")["item"].to_list()) == [2, 7]
    assert set(df.filter(pl.col("status") == "skipped")["reason"].to_list()) == {"not in --only"}
    assert 0 == run_cli([*base, "--limit", "1"])  # the limit counts listed ids only
    df = pl.read_parquet(data / "enrich" / "item-keywords.parquet").filter(pl.col("view") == "text")
    assert df.filter(pl.col("status") == "ok")["item"].to_list() == [2]
    ids.write_text("2\nseven\n")
    assert 2 == run_cli(base)  # a bad line: one clear error
    ids.write_text("2\n99\n")
    before = (data / "enrich" / "item-keywords.parquet").read_bytes()
    assert 2 == run_cli(base)  # an id outside the catalogue: refused, nothing rewritten
    assert (data / "enrich" / "item-keywords.parquet").read_bytes() == before
