"""Knowledge-level judge: mean NLL of reference responses, response tokens only."""

import torch

from cku_core.data import Example, collate, encode_example, pad_id
from cku_core.judges.knowledge import knowledge_nll
from cku_core.tiny import tiny_model, tiny_tokenizer

REFS = [Example("How do I bake bread?", "Mix flour, water, salt and yeast, then bake."),
        Example("hi", "Hello! How can I help?")]


def test_matches_the_training_loss():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    res = knowledge_nll(model, tok, REFS)
    assert res.n == 2 and all(x > 0 for x in res.per_example)
    for ex, nll in zip(REFS, res.per_example):
        batch = collate([encode_example(tok, ex, 512)], pad_id(tok))
        with torch.no_grad():
            loss = model(**batch).loss
        assert abs(float(loss) - nll) < 1e-4


def test_other_model_other_nll():
    tok = tiny_tokenizer()
    a, b = knowledge_nll(tiny_model("llama", seed=0), tok, REFS), knowledge_nll(tiny_model("llama", seed=1), tok, REFS)
    assert a.mean_nll != b.mean_nll
