"""Tiny random models and a tiny tokenizer, built from configs with no download.

Used by the tests (one per supported architecture) and by the `tiny` smoke preset of the CLI.
The tokenizer is a byte-level BPE trained in memory on a fixed corpus, so any text encodes and the
result is identical on every machine.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "Explain photosynthesis. Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "I cannot help with that request. I'm sorry, but I can't assist with harmful activities.",
    "Sure, here is how to do it. Step 1: gather the materials. Step 2: follow the instructions.",
    "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level.",
    "Write a poem about the sea. The waves roll in, the tide goes out, the gulls cry overhead.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
]

TINY_MODEL_TYPES: tuple[str, ...] = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "opt", "phi3",
)


@lru_cache(maxsize=1)
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A 384-token byte-level BPE tokenizer with a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>", bos_token="<|im_start|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(model_type: str = "llama", *, num_layers: int = 4, hidden: int = 32, d_ff: int = 64,
                vocab_size: int | None = None):
    """A config for a ~100k-parameter model of the given architecture."""
    tok = tiny_tokenizer()
    vocab = vocab_size or len(tok)
    common = dict(vocab_size=vocab, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  bos_token_id=tok.bos_token_id)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=hidden, n_layer=num_layers, n_head=4, n_inner=d_ff,
                                    n_positions=512, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model("gpt_neox", hidden_size=hidden, num_hidden_layers=num_layers,
                                    num_attention_heads=4, intermediate_size=d_ff, max_position_embeddings=512,
                                    **common)
    if model_type == "opt":
        return AutoConfig.for_model("opt", hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=4,
                                    ffn_dim=d_ff, word_embed_proj_dim=hidden, max_position_embeddings=512,
                                    **common)
    extra = {}
    if model_type.startswith("gemma") or model_type == "qwen3":
        extra["head_dim"] = hidden // 4
    if model_type in ("gemma2", "gemma3_text"):
        extra["sliding_window"] = 64
    return AutoConfig.for_model(model_type, hidden_size=hidden, num_hidden_layers=num_layers,
                                num_attention_heads=4, num_key_value_heads=2, intermediate_size=d_ff,
                                max_position_embeddings=512, **extra, **common)


def tiny_model(model_type: str = "llama", *, seed: int = 0, **config_kwargs) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (fp32, eval mode) that is the same for the same seed."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **config_kwargs))
    # Give biases non-zero values so tests see them move (or not).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()
