"""MMSRARec pieces: reward terms against hand-computed values, similar-user retrieval over training users only,
multi-task SFT examples and the ``--method mmsrarec`` run."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from helpers import run_cli, write_cycle_dataset

from mmseqrec.data.dataset import SequenceData
from mmseqrec.llmrec.candidates import build_candidate_set, read_candidate_set
from mmseqrec.llmrec.retrieval import similar_users
from mmseqrec.llmrec.rewards import RewardWeights, reward, reward_info, reward_len, reward_recon


class _Uniform(torch.nn.Module):
    """A 'language model' with all-zero logits: every token has probability 1 / V, so perplexity = V."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


def _char_tokenizer():
    from mmseqrec.enrich.random_vlm import _tokenizer

    tok, vocab = _tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 0)
    return tok, len(vocab)


def test_reward_terms_match_hand_computed_values():
    assert reward_len(["a, b, , c", "one", ""]).tolist() == [-3.0, -1.0, 0.0]
    table = {"kw": [1.0, 0.0], "text": [1.0, 1.0], "other": [0.0, 2.0]}

    def embed(xs):
        return np.asarray([table[x] for x in xs])

    assert reward_info(["kw", "kw"], ["text", "other"], embed) == pytest.approx([1 / math.sqrt(2), 0.0])
    tok, V = _char_tokenizer()
    assert reward_recon(["red, cup"], ["a red cup"], _Uniform(V), tok) == pytest.approx([-float(V)])
    total = reward(["kw"], ["text"], embed=embed, model=_Uniform(V), tokenizer=tok,
                   weights=RewardWeights(2.0, 0.5, 3.0))
    # "text" has 4 characters; R = 2 * cos + 0.5 * (-V) + 3 * (-1 keyword)
    assert total == pytest.approx([2 / math.sqrt(2) - 0.5 * V - 3.0])


def test_recon_counts_only_the_text_tokens():
    tok, V = _char_tokenizer()

    class Peaked(torch.nn.Module):  # puts all its mass on 'x': every text token 'x' is certain, others are not
        def forward(self, input_ids):
            logits = torch.full((*input_ids.shape, V), -30.0)
            logits[..., tok.convert_tokens_to_ids("x")] = 0.0
            return SimpleNamespace(logits=logits)

    # text " xx": tokens ' ', 'x', 'x'. The prompt's own tokens ('k', 'y', 'y', ...) would be near-impossible too;
    # only the text counts: nll = (30 + lse, lse, lse) with lse = log(1 + (V - 1) e^-30) -> R = -exp(10 + lse)
    lse = math.log1p((V - 1) * math.exp(-30.0))
    r = reward_recon(["kyyyyy"], ["xx"], Peaked(), tok, template="{keywords}")
    assert r[0] == pytest.approx(-math.exp(10.0 + lse), rel=1e-9)


def test_retrieval_uses_training_users_only_and_never_the_user_itself():
    rng = np.random.default_rng(0)
    n_items = 200
    seqs_l = [rng.choice(np.arange(1, n_items), size=9, replace=False).tolist() for _ in range(60)]
    seqs_l[0][-1] = n_items  # a trap: item n_items is only ever user 1's last (held-out) item
    seqs = SequenceData.from_lists(seqs_l, n_items=n_items)
    cs = build_candidate_set(seqs, history=5, negatives=10, seed=4)

    class BagModel:  # user state = bag of its history items (a stand-in for SASRec's last hidden state)
        def user_states(self, h):
            out = torch.zeros(h.shape[0], n_items + 1)
            out.scatter_add_(1, h, torch.ones_like(h, dtype=torch.float32))
            out[:, 0] = 0
            return out + 1e-3

    sim = similar_users(BagModel(), seqs, cs, k=3)
    train_users = set(cs.users[cs.rows("train")].tolist())
    assert sim.users.shape == (cs.users.size, 3)
    for i, u in enumerate(cs.users):
        assert u not in sim.users[i]
        assert set(sim.users[i].tolist()) <= train_users
        for nb, it in zip(sim.users[i], sim.items[i], strict=True):
            assert it == seqs.sequence(int(nb))[-1]  # the neighbour's next (= its last) item
        # nothing from an evaluated user's validation/test period is ever returned
    held_out = {int(seqs.sequence(int(u))[-k]) for u, s in zip(cs.users, cs.split, strict=True) if s != "train"
                for k in (1, 2)}
    own_only = {it for it in held_out if sum(it in s for s in seqs_l) == 1}
    assert not own_only & set(sim.items.ravel().tolist())
    if cs.split[cs.users.tolist().index(1)] != "train":
        assert n_items not in sim.items
    assert np.all(np.diff(sim.similarity, axis=1) <= 1e-12)  # most similar first


def test_mmsrarec_run_with_multitask_sft(tmp_path):
    from mmseqrec.llmrec.random_lm import build_random_lm

    lm = build_random_lm(tmp_path / "lm", seed=3)
    data = write_cycle_dataset(tmp_path / "data", n_users=30, n_items=40, seq_len=8)
    lists = tmp_path / "lists.parquet"
    assert 0 == run_cli(["llmrec", "candidates", str(data), "--out", str(lists), "--history", "3"])
    sas = tmp_path / "sas"
    assert 0 == run_cli(["train", "--data", str(data), "--model", "sasrec", "--out", str(sas), "--epochs", "1",
                         "--device", "cpu", "--set", "model.n_layers=1"])
    run = tmp_path / "mm"
    args = ["llmrec", "train", "--method", "mmsrarec", "--data", str(data), "--candidates", str(lists), "--model",
            str(lm), "--out", str(run), "--max-train-users", "3", "--max-length", "400"]
    assert 2 == run_cli(args)  # no --retriever
    assert 2 == run_cli([*args, "--retriever", str(sas)])  # no item keywords yet
    assert 2 == run_cli([*args, "--retriever", str(sas), "--keywords", "tags"])
    # the stand-in: the item's own text in place of generated keywords, recorded in the run's config
    alt = [a if a != str(run) else str(tmp_path / "mm-text") for a in args]
    assert 0 == run_cli([*alt, "--retriever", str(sas), "--keywords", "item-text", "--multitask"])
    src = yaml.safe_load((tmp_path / "mm-text" / "config.yaml").read_text())["prompt_sources"]
    assert src["keywords"] == "item text" and src["keywords_from_file"] == 0
    (data / "enrich").mkdir(exist_ok=True)
    pl.DataFrame({"item": pl.Series([i for i in range(1, 36) for _ in (0, 1)], dtype=pl.Int32),
                  "view": ["text", "image"] * 35, "text": [f"kw{i}, thing" for i in range(70)],
                  "status": ["ok"] * 70}).write_parquet(data / "enrich" / "item-keywords.parquet")
    assert 0 == run_cli([*args, "--retriever", str(sas)])
    m = json.loads((run / "metrics.json").read_text())
    cs = read_candidate_set(lists)
    assert m["test"]["n_cases"] == cs.counts()["test"]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[0]["n_pairs"] == 3 and log[0]["n_examples"] == 3 * 4  # yes + no + two auxiliary per user
    # the items whose keywords these prompts need: histories, all candidates, similar users' next items
    ids_file = tmp_path / "kw-items.txt"
    assert 0 == run_cli(["llmrec", "keyword-items", str(data), "--candidates", str(lists), "--retriever", str(sas),
                         "--out", str(ids_file)])
    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.train.run import load_run

    sim = similar_users(load_run(sas).model, DatasetDir(data).sequences, cs, k=3)
    want = (set(cs.history[cs.history > 0].tolist()) | set(cs.candidates.ravel().tolist())
            | set(sim.items.ravel().tolist()))
    assert [int(x) for x in ids_file.read_text().split()] == sorted(want)


def test_keyword_items_by_hand():
    from mmseqrec.llmrec.mmsrarec import keyword_items

    cs = SimpleNamespace(history=np.array([[0, 7, 2], [3, 3, 9]]), candidates=np.array([[4, 2], [9, 11]]))
    sim = SimpleNamespace(items=np.array([[5], [7]]))
    assert keyword_items(cs, sim).tolist() == [2, 3, 4, 5, 7, 9, 11]
