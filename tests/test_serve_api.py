"""The HTTP service (``mmseqrec serve``) through FastAPI's TestClient on a real synthetic dataset and real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
from fastapi.testclient import TestClient
from serve_fixtures import build_served

from mmseqrec.serve.app import MAX_BODY_BYTES, create_app
from mmseqrec.serve.index import FaissSearch, attach_index, recall_at_k
from mmseqrec.serve.recommend import Recommender


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    paths = build_served(tmp_path_factory.mktemp("serve"))
    recs = {"sasrec": Recommender(paths["sasrec"]), "gru4rec": Recommender(paths["gru4rec"])}
    return paths, recs


@pytest.fixture(scope="module")
def client(served):
    return TestClient(create_app(served[1], api_key=""), raise_server_exceptions=False)


def _expected_top(rec: Recommender, history: list[str], k: int) -> list[str]:
    """Top-k by the model's full scores with padding and the history removed (computed here, not by the seam)."""
    known = [rec.index[h] for h in history if h in rec.index]
    ids = torch.zeros(1, rec.max_len, dtype=torch.long)
    ids[0, -len(known):] = torch.tensor(known)
    with torch.no_grad():
        s = rec.run.model.score_all(ids)[0].numpy().astype(np.float64)
    s[0] = -np.inf
    s[known] = -np.inf
    return [str(rec.ids[i]) for i in np.argsort(-s, kind="stable")[:k]]


def test_recommend_matches_the_model_and_carries_card_fields(client, served):
    _, recs = served
    r = client.post("/recommend", json={"history": ["i01", "i02", "no-such-item"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["run"] == "sasrec" and body["source"] == "model" and body["unknown"] == ["no-such-item"]
    assert [it["item_id"] for it in body["items"]] == _expected_top(recs["sasrec"], ["i01", "i02"], 5)
    assert [it["rank"] for it in body["items"]] == [1, 2, 3, 4, 5]
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)
    first = body["items"][0]
    assert first["title"] and first["image_url"] == f"/items/{first['item_id']}/image"
    assert first["mllm"]["item-description"].startswith("echo ")  # the enrich output of that item
    assert "description" in first["text"]
    other = client.post("/recommend", json={"history": ["i01", "i02"], "k": 5, "run": "gru4rec"}).json()
    assert other["run"] == "gru4rec"
    assert [it["item_id"] for it in other["items"]] == _expected_top(recs["gru4rec"], ["i01", "i02"], 5)


def test_history_items_excluded_unless_asked(client):
    hist = ["i03", "i04", "i05"]
    ids = [it["item_id"] for it in client.post("/recommend", json={"history": hist, "k": 40}).json()["items"]]
    assert len(ids) == 37 and not set(ids) & set(hist)
    ids = [it["item_id"] for it in client.post(
        "/recommend", json={"history": hist, "k": 40, "exclude_history": False}).json()["items"]]
    assert len(ids) == 40 and set(hist) <= set(ids)


def test_empty_history_is_400_or_labelled_popularity(client, served):
    r = client.post("/recommend", json={"history": [], "k": 3})
    assert r.status_code == 400 and "empty history" in r.json()["detail"] and "popularity" in r.json()["detail"]
    r = client.post("/recommend", json={"history": ["zz"], "k": 3})
    assert r.status_code == 400 and "none of the history ids" in r.json()["detail"]
    r = client.post("/recommend", json={"history": [], "k": 3, "cold": "popularity"})
    assert r.status_code == 200 and r.json()["source"] == "popularity"
    pop = served[1]["sasrec"].popularity().numpy()
    assert [it["score"] for it in r.json()["items"]] == sorted(pop[1:].tolist(), reverse=True)[:3]


@pytest.mark.parametrize("body, status, word", [
    ({"history": ["i01"], "k": 0}, 422, "k"),
    ({"history": ["i01"], "k": 10_000}, 422, "k"),
    ({"history": ["i01"], "k": "ten"}, 422, "k"),
    ({"history": ["i01"], "k": True}, 422, "k"),
    ({"history": ["i01"], "exclude_history": "yes"}, 422, "exclude_history"),
    ({"history": ["i01"], "user": 7}, 422, "user"),
    ({"history": [], "user": "nobody"}, 404, "nobody"),
    ({"history": "i01"}, 422, "history"),
    ({"history": [1, 2]}, 422, "history"),
    ({"k": 3}, 422, "history"),
    ({"history": ["i01"], "surprise": 1}, 422, "surprise"),
    ({"history": ["i01"], "cold": "maybe"}, 422, "cold"),
    ({"history": ["i01"], "run": "nope"}, 404, "nope"),
    ({"history": ["i01"] * 1001}, 422, "history"),
    ([1, 2, 3], 422, "body"),
])
def test_bad_requests_are_clear_4xx(client, body, status, word):
    r = client.post("/recommend", json=body)
    assert r.status_code == status, r.text
    assert word in r.json()["detail"]


def test_malformed_and_oversized_bodies(client):
    r = client.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post("/recommend", content=b"\xff\xfe", headers={"content-type": "application/json"})
    assert r.status_code == 422
    big = json.dumps({"history": ["i01"] * (MAX_BODY_BYTES // 6)}).encode()
    assert len(big) > MAX_BODY_BYTES
    r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(MAX_BODY_BYTES // 1000 + 2):
            yield b" " * 1000

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_items_users_health_and_page(client):
    hits = client.get("/items", params={"query": "BAMBOO", "limit": 3}).json()["items"]
    assert 0 < len(hits) <= 3 and all("bamboo" in h["title"].lower() for h in hits)
    item = client.get("/items/i01").json()
    assert item["item_id"] == "i01" and item["title"].endswith("No. 1") and item["mllm"]
    img = client.get("/items/i01/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png" and img.content[:4] == b"\x89PNG"
    assert client.get("/items/nope").status_code == 404
    assert client.get("/items", params={"limit": 0}).status_code == 422
    users = client.get("/users", params={"limit": 2}).json()
    assert users["n_users"] == 120 and len(users["users"]) == 2
    u = client.get(f"/users/{users['users'][0]}").json()
    assert u["history"] and u["held_out"] and "user-preference" in u["mllm"]
    assert client.get("/users/nobody").status_code == 404
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["runs"]["sasrec"]["index"] == {"kind": "exact"}
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "/recommend" in page.text
    assert "/recommend" in client.get("/openapi.json").json()["paths"]


def test_api_key_required_when_set(served, monkeypatch, caplog):
    monkeypatch.setenv("MMSEQREC_API_KEY", "s3cret-key")
    c = TestClient(create_app(served[1]), raise_server_exceptions=False)
    body = {"history": ["i01"], "k": 2}
    assert c.post("/recommend", json=body).status_code == 401
    assert c.post("/recommend", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert c.post("/recommend", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    assert c.get("/health").status_code == 200 and c.get("/").status_code == 200
    assert c.get("/items/i01/image").status_code == 200  # <img> tags send no header
    assert "s3cret-key" not in caplog.text


def test_faiss_index_equals_exact_when_probing_all_lists_and_measures_recall(served):
    pytest.importorskip("faiss", reason="faiss-cpu (serve extra) is not installed")
    rec = served[1]["sasrec"]
    hist = ["i07", "i08", "i09"]
    exact = [i for i, _, _ in rec(hist, 5).items]
    info = attach_index(rec, "auto", threshold=10_000)
    assert info == {"kind": "exact"} and rec.search is None  # 40 items: below the threshold
    with torch.no_grad():
        rec.search = FaissSearch.build(rec.run.model.item_matrix(), nlist=4, nprobe=4)
    try:
        assert rec.search.recall == 1.0  # every list probed: exact
        assert [i for i, _, _ in rec(hist, 5).items] == exact
    finally:
        rec.search = None
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 9], [3, 4]])) == 0.75


def test_serve_command_refuses_bad_options_with_one_line(served, tmp_path, capsys):
    from serve_fixtures import run_cli

    paths, _ = served
    assert run_cli(["serve", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert run_cli(["serve", str(paths["sasrec"]), "--index", "bogus"]) == 2
    assert "choose auto, exact or faiss" in capsys.readouterr().err
    assert run_cli(["serve", str(paths["sasrec"]), str(paths["gru4rec"]), "--index", "exact", "--index", "exact",
                    "--index", "faiss"]) == 2
    assert "once per run" in capsys.readouterr().err
    assert run_cli(["serve", f"a={paths['sasrec']}", f"a={paths['gru4rec']}"]) == 2
    assert "two runs named 'a'" in capsys.readouterr().err


def test_api_docs_load_their_assets_locally(served, monkeypatch, caplog):
    import re

    monkeypatch.setenv("MMSEQREC_API_KEY", "k")  # the docs and their files stay open
    c = TestClient(create_app(served[1]), raise_server_exceptions=False)
    for page, n_assets in (("/docs", 2), ("/redoc", 1)):
        html = c.get(page)
        assert html.status_code == 200
        urls = [u for u in re.findall(r'(?:src|href)="([^"]+)"', html.text) if not u.endswith(".png")]
        assert len(urls) >= n_assets and all(u.startswith("/docs-assets/") for u in urls), urls
        for u in urls:
            r = c.get(u)
            assert r.status_code == 200 and len(r.content) > 10_000, u
    assert "/openapi.json" in c.get("/docs").text and c.get("/openapi.json").status_code == 200
    assert "cdn" not in c.get("/docs").text.lower()
    # without the package that ships the files: the CDN, with a logged notice
    from mmseqrec.serve import docs

    monkeypatch.setattr(docs, "_asset_dir", lambda: None)
    with caplog.at_level("WARNING", logger="mmseqrec.serve"):
        c = TestClient(create_app(served[1]), raise_server_exceptions=False)
    assert "fastapi-offline is not installed" in caplog.text
    assert "cdn.jsdelivr.net" in c.get("/docs").text


def test_key_redactor_keeps_the_key_out_of_access_logs(caplog):
    """A client that puts the key in the URL: uvicorn's access record (args: client, method, path, version,
    status) is logged with the key replaced (mmseqrec serve installs the filter on uvicorn's loggers)."""
    import logging

    from mmseqrec.serve.app import KeyRedactor

    log = logging.getLogger("test.uvicorn.access")
    log.addFilter(KeyRedactor("s3cret-key"))
    with caplog.at_level("INFO", logger="test.uvicorn.access"):
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/runs?api_key=s3cret-key", "1.1", 401)
        log.info("key s3cret-key in a message")
    assert "s3cret-key" not in caplog.text and caplog.text.count("***") == 2 and "/runs?api_key=***" in caplog.text
