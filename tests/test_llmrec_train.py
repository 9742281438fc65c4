"""LoRA SFT on the yes/no prompt and the LLM-recommender run directory (tiny random Llama, CPU, no hub)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from helpers import run_cli, write_cycle_dataset

from mmseqrec.errors import InputError
from mmseqrec.llmrec.candidates import read_candidate_set
from mmseqrec.llmrec.prompts import RECOMMEND
from mmseqrec.llmrec.random_lm import build_random_lm
from mmseqrec.llmrec.scoring import answer_loss, collate_sft, encode_sft


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_random_lm(tmp_path_factory.mktemp("lm") / "tiny", seed=2)


def _write_preferences(data, users):
    d = data / "enrich"
    d.mkdir(exist_ok=True)
    pl.DataFrame({"user": pl.Series(users, dtype=pl.Int32),
                  "text": [f"The user appears to have a preference for items like {u % 5}." for u in users],
                  "status": ["ok"] * len(users)}).write_parquet(d / "user-preference.parquet")


def test_one_sft_step_lowers_the_loss_on_a_fixed_batch(lm_dir):
    import peft
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                       lora_dropout=0.0, task_type="CAUSAL_LM"))
    prompts = [RECOMMEND.render(preference="likes comedies.", title=t, description="a film.") for t in ("A", "B")]
    batch = collate_sft([encode_sft(tok, prompts[0], True), encode_sft(tok, prompts[1], False)], pad_id=0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    before = model(**batch).loss
    # the loss is the mean cross-entropy over the answer tokens only (yes / no + end of turn), by hand
    logits = model(**batch).logits.detach()
    lab = batch["labels"]
    mask = lab[:, 1:] != -100
    assert int(mask.sum()) == (3 + 1) + (2 + 1)  # character tokenizer: "yes", "no", each + <|im_end|>
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    manual = -logp.gather(-1, lab[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].mean()
    assert float(before.detach()) == pytest.approx(float(manual), abs=1e-4)
    # the training loss computes the head at the answer positions only: the same value
    assert float(answer_loss(model, batch)) == pytest.approx(float(before.detach()), abs=1e-5)
    before.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = model(**batch).loss
    assert float(after) < float(before.detach())


def test_train_run_contract_compare_and_reevaluate(tmp_path, lm_dir):
    data = write_cycle_dataset(tmp_path / "data", n_users=40, n_items=30, seq_len=9)
    lists = tmp_path / "lists.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--seed", "1"])
    cs = read_candidate_set(lists)
    run = tmp_path / "llm"
    args = ["llmrec", "train", "--data", str(data), "--candidates", str(lists), "--model", str(lm_dir),
            "--out", str(run), "--max-train-users", "6", "--epochs", "1", "--max-length", "512"]
    assert 2 == run_cli(args)  # no preference summaries yet: one clear error, nothing written
    assert not run.exists()
    _write_preferences(data, cs.users[:-1].tolist())
    assert 2 == run_cli(args)  # one user of the file without a summary
    _write_preferences(data, cs.users.tolist())
    assert 0 == run_cli(args)
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "config.yaml").exists()
    m = json.loads((run / "metrics.json").read_text())
    assert m["protocol"] == f"candidates:file={lists}"
    assert m["candidates_file"]["n_negatives"] == 20
    assert m["test"]["n_cases"] == cs.counts()["test"] and m["valid"]["n_cases"] == cs.counts()["valid"]
    assert {"AUC", "AUC_global", "HR@5", "NDCG@5", "MRR@5"} <= set(m["test"])
    assert 1.0 <= m["inference"]["forwards_per_user"] <= 2.0  # a prefix already in the kept cache: 1
    ranks = pl.read_parquet(run / "ranks.parquet")
    assert sorted(ranks["user"].to_list()) == sorted(cs.users[cs.rows("test")].tolist())
    # a sequential run scored on the same file pairs with it
    sas = tmp_path / "sas"
    assert 0 == run_cli(["train", "--data", str(data), "--model", "sasrec", "--out", str(sas), "--epochs", "1",
                         "--device", "cpu", "--set", "model.n_layers=1"])
    assert 0 == run_cli(["evaluate", str(sas), "--protocol", f"candidates:file={lists}"])
    from mmseqrec.evaluate.report import compare_runs, load_run_result

    a = load_run_result(sas, f"candidates:file={lists}")
    b = load_run_result(run)
    rows = compare_runs(a, b, ["HR@5", "AUC"])
    assert rows[0]["n"] == cs.counts()["test"]
    assert 0 == run_cli(["compare", str(sas), str(run), "--protocol", f"candidates:file={lists}"])
    assert 0 == run_cli(["report", str(run)])
    # re-evaluation from the saved adapter gives the same numbers
    before = m["test"]
    assert 0 == run_cli(["llmrec", "evaluate", str(run)])
    again = json.loads((run / "metrics.json").read_text())["test"]
    assert np.allclose([again[k] for k in before], [before[k] for k in before], atol=1e-6)


def test_bad_inputs_are_clear(tmp_path, lm_dir):
    from transformers import AutoTokenizer

    from mmseqrec.llmrec.run import load_lm

    tok = AutoTokenizer.from_pretrained(lm_dir)
    tok.chat_template = None
    bare = tmp_path / "bare"
    import shutil

    shutil.copytree(lm_dir, bare)
    tok.save_pretrained(bare)
    for f in bare.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(InputError, match="no chat template"):
        load_lm(bare)
    # an empty history in a candidate file
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"user": [1, 2], "target": [1, 2], "candidates": [[1, 3], [2, 3]], "split": ["test", "test"],
                  "history": [[4], []]}).write_parquet(bad)
    with pytest.raises(InputError, match="empty history") as e:
        read_candidate_set(bad)
    assert "line 2" in str(e.value) and "history" in str(e.value)


def test_valid_selection_keeps_the_best_adapter(tmp_path, lm_dir):
    data = write_cycle_dataset(tmp_path / "data", n_users=40, n_items=30, seq_len=9)
    lists = tmp_path / "lists.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--seed", "2", "--negatives", "8"])
    cs = read_candidate_set(lists)
    _write_preferences(data, cs.users.tolist())
    run = tmp_path / "sel"
    args = ["llmrec", "train", "--data", str(data), "--candidates", str(lists), "--model", str(lm_dir), "--out",
            str(run), "--max-train-users", "4", "--epochs", "2", "--batch-size", "2", "--lr", "0.05",
            "--eval-every", "1", "--max-length", "512", "--seed", "2"]
    assert 2 == run_cli([*args, "--select-metric", "HR@50"])  # not a metric of the run: refused, nothing written
    assert not run.exists()
    assert 0 == run_cli([*args, "--select-metric", "NDCG@5"])
    m = json.loads((run / "metrics.json").read_text())
    sel = m["selection"]
    hist = sel["history"]
    assert [h["step"] for h in hist] == list(range(1, 9))  # 4 users x (yes + no) / batch 2 = 4 steps per epoch
    values = [h["NDCG@5"] for h in hist]
    assert sel["metric"] == "valid NDCG@5" and sel["best"] == hist[int(np.argmax(values))]  # first of ties
    assert sel["best"]["step"] < 8  # (this seed) the best adapter is not the last one
    assert m["valid"]["NDCG@5"] == pytest.approx(max(values), abs=1e-9)  # the kept adapter is the best one
    assert m["protocol"] == f"candidates:file={lists}" and m["test"]["n_cases"] == cs.counts()["test"]
    # the saved adapter is the selected one: re-scoring it gives the selected valid value
    assert 0 == run_cli(["llmrec", "evaluate", str(run)])
    again = json.loads((run / "metrics.json").read_text())
    assert again["valid"]["NDCG@5"] == pytest.approx(max(values), abs=1e-6)
    assert again["selection"] == sel
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert sum("eval" in r for r in log) == 8 and sum("sft_loss" in r for r in log) == 2
