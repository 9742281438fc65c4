"""LLM-recommender runs (``mmseqrec llmrec train``) behind the serve seam: a named candidate stage, re-ranked by the
run's yes/no scorer, through FastAPI's TestClient and ``mmseqrec recommend`` (tiny random Llama, CPU, no hub)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("peft", reason="the llm extra (peft) is not installed")
from fastapi.testclient import TestClient
from serve_fixtures import build_served, run_cli

from mmseqrec.serve.app import create_app
from mmseqrec.serve.llmrec import LLMRecommender
from mmseqrec.serve.recommend import Recommender


def _ok(args: list[str]) -> None:
    assert run_cli(args) == 0, f"mmseqrec {' '.join(args)} failed"


@pytest.fixture(scope="module")
def llm_runs(tmp_path_factory):
    from mmseqrec.llmrec.random_lm import build_random_lm

    root = tmp_path_factory.mktemp("serve-llm")
    paths = build_served(root)
    data = paths["data"]
    lm = build_random_lm(root / "lm", seed=4)
    lists = root / "lists.parquet"
    _ok(["llmrec", "candidates", str(data), "--out", str(lists), "--history", "3", "--max-users", "40"])
    common = ["--data", str(data), "--candidates", str(lists), "--model", str(lm), "--max-train-users", "3",
              "--max-length", "400"]
    _ok(["llmrec", "train", *common, "--out", str(root / "msr")])
    _ok(["enrich", str(data), "--task", "item-keywords", "--backend", "echo", "--no-progress"])
    _ok(["llmrec", "train", *common, "--method", "mmsrarec", "--retriever", str(paths["sasrec"]), "--out",
         str(root / "mm")])
    return {**paths, "lists": lists, "msr": root / "msr", "mm": root / "mm"}


@pytest.fixture(scope="module")
def client(llm_runs):
    sas = Recommender(llm_runs["sasrec"])
    recs = {"sasrec": sas, "msr": LLMRecommender(llm_runs["msr"], n_candidates=12),
            "msr-sas": LLMRecommender(llm_runs["msr"], candidates_from=sas, candidates_name="sasrec", n_candidates=6)}
    return TestClient(create_app(recs, api_key=""), raise_server_exceptions=False), recs


def _popularity_by_hand(ds) -> np.ndarray:
    """Training interactions per item: every sequence without its last two items (all of it below 3 items)."""
    seqs = ds.sequences
    counts = np.zeros(ds.n_items + 1)
    for u in range(1, seqs.n_users + 1):
        s = np.asarray(seqs.sequence(u))
        np.add.at(counts, s[:-2] if s.size >= 3 else s, 1)
    return counts


def _reference_scores(run, prompts: list[str]) -> np.ndarray:
    """p(yes) with one full forward per prompt (base LM + the run's adapter, loaded here)."""
    import peft

    from mmseqrec.llmrec.run import load_lm
    from mmseqrec.llmrec.scoring import YesNoScorer

    base, tok = load_lm(run.model_dir)
    model = peft.PeftModel.from_pretrained(base, run.path / "adapter").eval()
    return YesNoScorer(model, tok).score_each(prompts)


def test_popularity_candidates_reranked_by_the_runs_scorer(client):
    import copy

    _, recs = client
    hist = ["i03", "i07", "nope"]
    rec = copy.copy(recs["msr"])
    ds = rec.run.dataset
    # candidates by hand: the N most popular training items, history excluded, N at a cut without a tie
    pop = _popularity_by_hand(ds)
    pop[0] = -np.inf
    pop[[rec.index[h] for h in hist[:2]]] = -np.inf
    order = np.argsort(-pop, kind="stable")
    n = next(n for n in range(8, ds.n_items - 2) if pop[order[n - 1]] > pop[order[n]])
    cands = order[:n]
    rec.n_candidates = n
    c = TestClient(create_app({"msr": rec}, api_key=""), raise_server_exceptions=False)
    r = c.post("/recommend", json={"history": hist, "k": 5, "run": "msr"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "model" and body["unknown"] == ["nope"]
    assert body["candidates"] == {"stage": "popularity", "n": n, "n_scored": n}
    pref = body["preference"]
    assert pref["source"].startswith("history titles") and "ad-hoc" in pref["source"]
    titles = [c.get(f"/items/{i}").json()["title"] for i in hist[:2]]
    assert all(t in pref["text"] for t in titles)
    # the prompt by hand: MLLM-MSR's template with that preference text and each candidate's title/description
    from mmseqrec.llmrec.prompts import RECOMMEND, load_prompt_texts

    texts = load_prompt_texts(ds)
    prompts = [RECOMMEND.render(preference=pref["text"], title=texts.title[i], description=texts.description[i])
               for i in cands]
    ref = _reference_scores(rec.run, prompts)
    best = np.argsort(-ref, kind="stable")[:5]
    assert [it["item_id"] for it in body["items"]] == [str(rec.ids[cands[j]]) for j in best]
    assert [it["score"] for it in body["items"]] == pytest.approx(ref[best].tolist(), abs=1e-5)
    assert body["items"][0]["image_url"] and body["items"][0]["title"]


def test_a_test_users_stored_summary_fills_the_prompt(client):
    c, _recs = client
    users = c.get("/users", params={"limit": 200}).json()["users"]
    uid = users[5]
    u = c.get(f"/users/{uid}").json()
    r = c.post("/recommend", json={"history": [], "user": uid, "k": 3, "run": "msr"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["preference"] == {"text": " ".join(u["mllm"]["user-preference"].split()),
                                  "source": "enrich/user-preference.parquet"}
    assert body["history"] == u["history"] and body["user"] == uid
    assert not {it["item_id"] for it in body["items"]} & set(u["history"])
    # a sequential run takes the user's history too (and no preference)
    seq = c.post("/recommend", json={"history": [], "user": uid, "k": 3}).json()
    assert seq["history"] == u["history"] and seq["preference"] is None and seq["candidates"] is None
    assert c.post("/recommend", json={"history": [], "user": "nobody", "run": "msr"}).status_code == 404


def test_candidates_from_another_run_are_its_top_n(client):
    c, recs = client
    hist = ["i01", "i02", "i05"]
    body = c.post("/recommend", json={"history": hist, "k": 4, "run": "msr-sas"}).json()
    assert body["candidates"] == {"stage": "run:sasrec", "n": 6, "n_scored": 6}
    top6 = [i for i, _, _ in recs["sasrec"](hist, 6).items]
    got = [it["item_id"] for it in body["items"]]
    assert len(got) == 4 and set(got) <= set(top6)
    # k above N: every candidate, no more
    assert len(c.post("/recommend", json={"history": hist, "k": 50, "run": "msr-sas"}).json()["items"]) == 6


def test_cold_start_and_health_label_the_llm_run(client):
    c, _ = client
    r = c.post("/recommend", json={"history": [], "k": 3, "run": "msr"})
    assert r.status_code == 400 and "empty history" in r.json()["detail"]
    r = c.post("/recommend", json={"history": ["zz"], "k": 3, "run": "msr", "cold": "popularity"})
    assert r.status_code == 200 and r.json()["source"] == "popularity" and r.json()["candidates"] is None
    runs = c.get("/health").json()["runs"]
    assert runs["msr"]["model"] == "mllm-msr" and runs["msr-sas"]["candidates"] == {"stage": "run:sasrec", "n": 6}
    assert "llm re-rank" in runs["msr"]["index"]["kind"]


def test_mmsrarec_prompt_equals_the_training_prompt(llm_runs):
    """For a test row of the candidate file, the served prompt (its whole history before the target, its user)
    is the prompt the run was evaluated with."""
    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.llmrec.candidates import read_candidate_set
    from mmseqrec.llmrec.run import LLMRecConfig, Prompter

    rec = LLMRecommender(llm_runs["mm"], n_candidates=5)
    ds = DatasetDir(llm_runs["data"])
    cs = read_candidate_set(llm_runs["lists"], ds.n_items)
    cfg = rec.run.config
    prompter = Prompter(LLMRecConfig.model_validate(cfg.model_dump()), ds, cs)
    for row in cs.rows("test")[:3]:
        user = int(cs.users[row])
        seq = np.asarray(ds.sequences.sequence(user))
        known = seq[:-1].tolist()  # test rows: the target is the last item
        assert known[-3:] == cs.history[row].tolist()
        served, pref = rec.prompts(known, cs.candidates[row], user)
        assert pref is None
        assert served == [prompter.prompt(int(row), int(i)) for i in cs.candidates[row]]
    res = rec([str(rec.ids[i]) for i in known], k=3)
    assert res.candidates["stage"] == "popularity" and len(res.items) == 3


def test_recommend_command_on_an_llm_run(llm_runs, capsys, tmp_path):
    from helpers import write_cycle_dataset

    assert run_cli(["recommend", str(llm_runs["msr"]), "--history", "i01,i02", "-k", "3", "--n-candidates", "5",
                    "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["candidates"] == {"stage": "popularity", "n": 5, "n_scored": 5} and len(out["items"]) == 3
    assert out["preference"]["source"].startswith("history titles")
    assert run_cli(["recommend", str(llm_runs["msr"]), "--history", "i01,i02", "-k", "3", "--candidates-from",
                    str(llm_runs["sasrec"]), "--n-candidates", "4"]) == 0
    text = capsys.readouterr().out
    assert "re-ranked candidates: run:sasrec top-4" in text and "history titles" in text
    assert run_cli(["recommend", str(llm_runs["msr"]), "--history", "i01", "--n-candidates", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert run_cli(["recommend", str(llm_runs["msr"]), "--history", "i01", "--candidates-from", "pop"]) == 2
    assert run_cli(["serve", str(llm_runs["msr"]), "--index", "faiss"]) == 2
    assert "an LLM recommender re-ranks a candidate list" in capsys.readouterr().err
    other = write_cycle_dataset(tmp_path / "other", n_users=20, n_items=15, seq_len=6)
    assert run_cli(["recommend", str(llm_runs["msr"]), "--history", "1", "--data", str(other)]) == 2
    assert "trained on a dataset with 40 items" in capsys.readouterr().err


def test_html_report_shows_the_llm_runs_reranked_examples(llm_runs, tmp_path):
    out = tmp_path / "report.html"
    assert run_cli(["report", str(llm_runs["msr"]), "--out", str(out)]) == 0
    html = out.read_text()
    assert "could not load" not in html and "re-rank of popularity top-20" in html


def test_mmsrarec_on_impression_rows_keys_the_pool_at_each_rows_position(llm_runs, tmp_path):
    """An impression-style file (targets inside the sequences, ``position`` column): the training users are keyed
    at their rows' history end, as :func:`mmseqrec.llmrec.retrieval.similar_users` keys them, and a row's served
    prompt is the one the run is evaluated with."""
    import dataclasses
    import shutil

    import yaml

    from mmseqrec.data.dataset import DatasetDir
    from mmseqrec.llmrec.candidates import read_candidate_set, write_candidate_set
    from mmseqrec.llmrec.retrieval import user_states
    from mmseqrec.llmrec.run import LLMRecConfig, Prompter

    ds = DatasetDir(llm_runs["data"])
    seqs = ds.sequences
    loo = read_candidate_set(llm_runs["lists"], ds.n_items)
    h = loo.history.shape[1]
    # every row moved 1 or 2 interactions back (not before a full history): no row ends at the sequence's end
    pos = np.maximum(h, loo.positions - 1 - np.arange(loo.users.size) % 2)
    at = seqs.indptr[loo.users] + pos
    targets = seqs.items[at].astype(np.int64)
    cands = np.where(loo.candidates == loo.targets[:, None], targets[:, None], loo.candidates)
    hist = seqs.items[at[:, None] + np.arange(-h, 0)[None, :]].astype(np.int64)
    imp = dataclasses.replace(loo, targets=targets, candidates=cands, history=hist, positions=pos)
    write_candidate_set(tmp_path / "imp.parquet", imp, ds.n_items)
    cs = read_candidate_set(tmp_path / "imp.parquet", ds.n_items)
    run = shutil.copytree(llm_runs["mm"], tmp_path / "mm")
    raw = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**raw, "candidates": str(tmp_path / "imp.parquet")}))

    rec = LLMRecommender(run, n_candidates=5)
    pool = cs.rows("train")
    assert (cs.hist_end(seqs)[pool] < seqs.indptr[cs.users[pool] + 1] - 1).all()
    keyed = user_states(rec.retriever, seqs, cs.users[pool], cs.hist_end(seqs)[pool])
    assert np.allclose(rec.pool_states, keyed, atol=1e-6) and np.array_equal(rec.pool_next, cs.targets[pool])
    prompter = Prompter(LLMRecConfig.model_validate({**rec.run.config.model_dump(),
                                                     "candidates": str(tmp_path / "imp.parquet")}), ds, cs)
    for row in cs.rows("test")[:4]:
        user = int(cs.users[row])
        known = seqs.sequence(user)[: int(cs.positions[row])].tolist()
        served, _ = rec.prompts(known, cs.candidates[row], user)
        assert served == [prompter.prompt(int(row), int(i)) for i in cs.candidates[row]]
