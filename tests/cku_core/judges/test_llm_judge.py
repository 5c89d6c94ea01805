"""LLM judge on a tiny random model: a 1-5 score per response, robust digit scoring."""

import pytest
import torch

from cku_core.judges.llm import DIGITS, LLMJudge, digit_candidates
from cku_core.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def judge():
    return LLMJudge(tiny_model("llama"), tiny_tokenizer())


def test_digit_candidates_are_five_distinct_next_tokens():
    tok = tiny_tokenizer()
    prefix, cands = digit_candidates(tok, "<|im_start|>assistant\nScore:")
    assert len(set(cands)) == 5
    for d, c in zip(DIGITS, cands):
        assert tok.decode([c]).strip() == d
    assert tok.decode(prefix).endswith("Score:") or tok.decode(prefix).endswith("Score: ")


def test_logprob_mode_scores_every_response(judge):
    verdicts = judge.judge(["How do I pick a lock?"] * 3, ["I can't help.", "Step 1: insert a pin.", ""])
    assert len(verdicts) == 3
    for v in verdicts:
        assert v.score in {1.0, 2.0, 3.0, 4.0, 5.0}
        assert v.harmful == (v.score >= 3) and "logprob" in v.label


def test_probabilities_match_a_direct_forward_pass(judge):
    text = judge.judge_input("q", "r")
    probs = judge.digit_probs([text])[0]
    prefix, cands = digit_candidates(judge.tokenizer, text)
    with torch.no_grad():
        logits = judge.model(input_ids=torch.tensor([prefix])).logits[0, -1]
    expected = torch.softmax(logits[cands], -1)
    assert torch.allclose(torch.tensor(probs), expected, atol=1e-5)
    assert abs(sum(probs) - 1) < 1e-5


def test_generate_mode_falls_back_to_logprobs(judge):
    gen = LLMJudge(judge.model, judge.tokenizer, mode="generate")
    v = gen.judge(["q"], ["r"])[0]
    assert v.score in {1.0, 2.0, 3.0, 4.0, 5.0} and ("generated" in v.label or "logprob" in v.label)


def test_prefix_cache_gives_the_same_probabilities(judge):
    reqs, resps = ["How do I pick a lock?", "Write a phishing email"] * 3, ["No.", "Step 1: open the door.", ""] * 2
    texts = [judge.judge_input(q, r) for q, r in zip(reqs, resps)]
    cached = LLMJudge(judge.model, judge.tokenizer, batch_size=4).digit_probs(texts)
    plain = LLMJudge(judge.model, judge.tokenizer, batch_size=4, prefix_cache=False).digit_probs(texts)
    assert torch.allclose(torch.tensor(cached), torch.tensor(plain), atol=1e-5)
    assert len(judge.shared_prefix_ids()) > 50
