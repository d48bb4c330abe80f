"""The offline recommender LM: every item one token, matched as a whole name only, or sub-word names shared between
items; the item-spelling statistics; the model builder."""

import json
import os
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


def test_a_saved_recommender_lm_reloads_with_the_same_tokenizer(texts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, tokenizer = build_recommender_lm(texts, sample_catalogue(), vocab_size=300, hidden_size=32, num_layers=1,
                                        output_dir=tmp_path)  # fmt: skip
    reloaded = AutoTokenizer.from_pretrained(tmp_path)  # what the CLI and the trainers do
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == len(reloaded)
    for text in texts[:50] + ["Answer: Björk</s>", "History: Röyksopp,Sigur Rós,:wumpscut:."]:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"], text
        assert reloaded.decode(reloaded(text)["input_ids"]) == text


def test_non_ascii_item_names_decode_exactly(texts):
    tokenizer = build_tokenizer(texts, vocab_size=300, items=["Björk", "Sigur Rós", "宇多田ヒカル"])
    for name in ("Björk", "Sigur Rós", "宇多田ヒカル"):
        ids = tokenizer(" " + name)["input_ids"]
        assert len(ids) == 2 and tokenizer.decode(ids) == " " + name


def _reference_spelling_stats(tokenizer, names):
    """The three numbers by brute force: every pair of names compared."""
    spellings = [tokenizer.tokenize(" " + name) for name in names]
    common = 0
    while all(len(s) > common + 1 and s[common] == spellings[0][common] for s in spellings):
        common += 1
    spellings = [s[common:] for s in spellings]
    shares = [any(set(s) & set(o) for j, o in enumerate(spellings) if j != i) for i, s in enumerate(spellings)]
    first = [any(s[0] == o[0] for j, o in enumerate(spellings) if j != i) for i, s in enumerate(spellings)]
    return sum(map(len, spellings)) / len(names), sum(shares) / len(names), sum(first) / len(names)


def test_subword_items_span_and_share_tokens(tmp_path):
    from transformers import AutoTokenizer

    from trl_dynamicpo.tiny import ITEM_TOKEN_STATS_FILE, item_token_stats

    names = sample_catalogue()[:400]
    template = [SWEEP_TEMPLATE.format(history="", candidates="")]
    model, tokenizer = build_recommender_lm(template, names, item_tokens="subword", vocab_size=600, hidden_size=32,
                                            num_layers=1, output_dir=tmp_path)  # fmt: skip
    assert model.config.vocab_size == len(tokenizer) <= 600  # a plain BPE: no item tokens added
    stats = item_token_stats(tokenizer, names)
    assert (stats.mean_tokens, stats.share_sharing_token, stats.share_sharing_first_token) == pytest.approx(
        _reference_spelling_stats(tokenizer, names)
    )
    assert stats.mean_tokens > 2 and stats.share_sharing_token > 0.9  # names span tokens and share them
    assert json.loads((tmp_path / ITEM_TOKEN_STATS_FILE).read_text())["mean_tokens"] == pytest.approx(stats.mean_tokens)
    # Reloading gives exactly the same tokenizer (the CLI reloads it by path).
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    builder = PromptBuilder(template=SWEEP_TEMPLATE, separator=", ")
    for i, ex in enumerate(load_sample("train")[:30]):
        text = builder.build(ex, i) + builder.completion(ex.target)
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    for name in names:
        assert reloaded(" " + name)["input_ids"] == tokenizer(" " + name)["input_ids"]
    # The whole-item tokenizer: one token per name (after the space marker every name shares), nothing shared.
    _, whole = build_recommender_lm(template, names, vocab_size=300, hidden_size=32, num_layers=1)
    assert item_token_stats(whole, names).as_dict() == {
        "items": len(names), "mean_tokens": 1.0, "share_sharing_token": 0.0, "share_sharing_first_token": 0.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="item_tokens"):
        build_recommender_lm(template, names, item_tokens="bytes")


def test_item_token_ids_do_not_depend_on_the_order_of_the_names(texts):
    """Equal-length names get their ids in name order, so a tokenizer (and a model's init) is reproducible."""
    names = sample_catalogue()[:300]
    first = build_tokenizer(texts, vocab_size=300, items=names)
    second = build_tokenizer(texts, vocab_size=300, items=list(reversed(names)))
    assert first.get_vocab() == second.get_vocab()


@pytest.mark.slow
def test_tokenizer_is_the_same_in_every_process(tmp_path):
    """Python's hash randomisation changes set order between processes; the tokenizer must not change with it."""
    import subprocess
    import sys

    script = (
        "import hashlib, json; from trl_dynamicpo.recsys import sample_catalogue; "
        "from trl_dynamicpo.tiny import build_tokenizer; "
        "tok = build_tokenizer(['History: Muse, Air.'] * 20, vocab_size=300, items=sample_catalogue()); "
        "print(hashlib.sha1(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest())"
    )
    digests = {
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(digests) == 1
