"""The offline recommender LM: every item one token, matched as a whole name only; the model builder."""

import re

import pytest
import torch

from trl_dynamicpo.recsys import TEMPLATES, PromptBuilder, load_sample, sample_catalogue
from trl_dynamicpo.tiny import build_recommender_lm, build_tokenizer


SWEEP_TEMPLATE = "History: {history}.\nCandidates: {candidates}."


@pytest.fixture(scope="module")
def texts():
    examples = load_sample("train")[:200]
    builder = PromptBuilder("music")
    return [builder.build(ex, i) + builder.completion(ex.target) for i, ex in enumerate(examples)] + [
        SWEEP_TEMPLATE.format(history="Muse", candidates="Air") + " Answer:"
    ] * 50


def _template_words() -> set[str]:
    words = set()
    for template in [t for family in TEMPLATES.values() for t in family] + [SWEEP_TEMPLATE, "Answer:"]:
        words.update(re.findall(r"[^\s{}]+", re.sub(r"\{\w+\}", " ", template)))
    return words


def test_item_tokens_never_split_template_words(texts):
    catalogue = sample_catalogue()
    plain = build_tokenizer(texts, vocab_size=400)  # the same BPE without item tokens
    items = build_tokenizer(texts, vocab_size=400, items=catalogue)
    words = _template_words()
    assert {"Candidates:", "History:", "Which", "artists"} <= words
    # Artists such as "Can", "3", "Air" or "One" exist: without whole-word matching "Candidates" became "Can" + ...
    assert any(name in "".join(words) for name in ("Can", "Which", "Name") if name in catalogue)
    for word in sorted(words):
        for text in (word, " " + word):
            assert items.tokenize(text) == plain.tokenize(text), word


def test_every_item_is_one_token_in_a_prompt(texts):
    catalogue = sample_catalogue()
    tokenizer = build_tokenizer(texts, vocab_size=400, items=catalogue)
    names = catalogue[:1500]
    for separator in (",", ", "):
        ids = tokenizer("History: " + separator.join(names) + ".")["input_ids"]
        decoded = {tokenizer.decode([i]).strip() for i in ids}
        assert set(names) <= decoded


def test_recommender_lm_builder(texts):
    model, tokenizer = build_recommender_lm(texts, sample_catalogue()[:300], vocab_size=300, hidden_size=32,
                                            num_layers=1, dtype=torch.float64, seed=3)  # fmt: skip
    assert model.dtype == torch.float64 and model.config.vocab_size == len(tokenizer)
    assert model.config.tie_word_embeddings and model.config.num_key_value_heads == 2
    again, _ = build_recommender_lm(texts, sample_catalogue()[:300], vocab_size=300, hidden_size=32, num_layers=1,
                                    dtype=torch.float64, seed=3)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    plain, plain_tokenizer = build_recommender_lm(texts, None, vocab_size=300, hidden_size=32, num_layers=1,
                                                  rms_norm_eps=1e-5)  # fmt: skip
    assert plain.config.rms_norm_eps == 1e-5  # config fields pass through
    assert len(plain_tokenizer) < len(tokenizer)  # no item tokens
