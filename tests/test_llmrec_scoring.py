"""Yes/no scoring on a tiny random Llama saved and loaded through ``from_pretrained``: p(yes) against a manual
softmax, the shared-prefix batch against one forward per candidate, the answer-only label mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmseqrec.errors import InputError
from mmseqrec.llmrec.prompts import RECOMMEND
from mmseqrec.llmrec.random_lm import build_random_lm
from mmseqrec.llmrec.scoring import YesNoScorer, answer_token_ids, chat_ids, collate_sft, encode_sft


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(tmp_path_factory, request):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_random_lm(tmp_path_factory.mktemp("lm") / "tiny", arch=request.param, seed=1)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok


def _prompts(titles):
    return [RECOMMEND.render(preference="The user appears to have a preference for comedies.", title=t,
                             description=f"A film called {t}.") for t in titles]


def test_p_yes_matches_a_manual_softmax(tiny):
    model, tok = tiny
    scorer = YesNoScorer(model, tok)
    prompts = _prompts(["Up", "Heat", "Alien 3", "The Long Goodbye"])
    got = scorer.score_shared(prompts)
    yes, no = tok("yes", add_special_tokens=False)["input_ids"][0], tok("no", add_special_tokens=False)["input_ids"][0]
    assert (yes, no) == answer_token_ids(tok)
    for p, g in zip(prompts, got, strict=True):
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].double()
        probs = torch.exp(logits - logits.max())
        probs = probs / probs.sum()  # full-vocabulary softmax, by hand
        expect = float(probs[yes] / (probs[yes] + probs[no]))
        assert g == pytest.approx(expect, abs=1e-5)
    # the shared-prefix batch = one full forward per candidate = one generate call per candidate
    assert np.allclose(scorer.score_each(prompts), got, atol=1e-5)
    assert np.allclose(scorer.score_generate(prompts), got, atol=1e-5)
    # MLLM-MSR's way: generate on left-padded batches of 6 (here 3) with up to 30 new tokens, scores[0]
    scorer.generated = 0
    assert np.allclose(scorer.score_generate(prompts, batch_size=3, max_new_tokens=4), got, atol=1e-5)
    assert 2 * 1 <= scorer.generated <= 4 * 4


def test_shared_prefix_runs_two_forwards_per_user(tiny):
    model, tok = tiny
    scorer = YesNoScorer(model, tok)
    prompts = _prompts([f"Movie {k}" for k in range(21)])
    scorer.score_shared(prompts)
    assert scorer.forwards == 2  # prefix once + all 21 suffixes as one batch
    ids = [chat_ids(tok, p) for p in prompts]
    assert len(set(map(tuple, ids))) == 21


def test_label_mask_covers_only_the_answer(tiny):
    _, tok = tiny
    prompt = _prompts(["Up"])[0]
    ids, labels = encode_sft(tok, prompt, True)
    n_prompt = len(chat_ids(tok, prompt))
    assert ids[:n_prompt] == chat_ids(tok, prompt)
    assert all(x == -100 for x in labels[:n_prompt])
    answer = tok("yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert labels[n_prompt:] == answer == ids[n_prompt:]
    ids_n, labels_n = encode_sft(tok, prompt, False)
    assert labels_n[n_prompt] == answer_token_ids(tok)[1]
    batch = collate_sft([(ids, labels), (ids_n, labels_n)], pad_id=0)
    assert int((batch["labels"] != -100).sum()) == len(answer) + len(labels_n) - n_prompt
    assert batch["attention_mask"][1, len(ids_n):].sum() == 0


def test_a_model_without_chat_template_is_refused(tiny):
    model, tok = tiny
    import copy

    bare = copy.deepcopy(tok)
    bare.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        YesNoScorer(model, bare)
    with pytest.raises(InputError, match="no chat template"):
        encode_sft(bare, "x", True)


def test_users_share_the_cached_head_and_match_single_forwards(tiny):
    """Several users in one call: the cache of the previous user's prefix is cut back to the common head (the
    chat template + the prompt's opening words) and reused; suffixes of very different lengths are packed."""
    model, tok = tiny
    scorer = YesNoScorer(model, tok)
    users = [[RECOMMEND.render(preference=pref, title=t, description=d) for t, d in cands] for pref, cands in [
        ("The user appears to have a preference for comedies.", [("Up", "x"), ("A Much Longer Title Here", "y z")]),
        ("The user appears to like long war dramas and westerns.", [("Heat", "crime"), ("Ran", "war, drama"),
                                                                     ("Z", "a b c d e f g h i j k l m n")]),
        ("Nothing.", [("Up", "x")]),  # one candidate: the whole prompt but its last token is the "prefix"
    ]]
    got = scorer.score_users(users)
    assert [g.shape for g in got] == [(2,), (3,), (1,)]
    assert scorer.forwards <= 2 * len(users)
    for prompts, g in zip(users, got, strict=True):
        assert np.allclose(scorer.score_each(prompts), g, atol=1e-5)
        assert np.allclose(scorer.score_shared(prompts), g, atol=1e-5)
