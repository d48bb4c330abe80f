import pytest

from trl_dynamicpo.recsys import TEMPLATES, PromptBuilder, RecExample, preference_dataset, sft_dataset
from trl_dynamicpo.recsys.training_data import sample_negatives


EXAMPLES = [
    RecExample(["Muse", "Air"], ["Moby", "Björk", "Portishead", "Slayer"], "Björk"),
    RecExample(["Moby"], ["Muse", "Air", "The Cure", "Pixies"], "Pixies"),
    RecExample(["Pixies", "Air", "Moby"], ["Shakira", "Muse", "Enigma", "Madonna"], "Shakira"),
]


@pytest.mark.parametrize("domain", sorted(TEMPLATES))
def test_domains_render_history_candidates_and_cue(domain):
    builder = PromptBuilder(domain, seed=1)
    for i, ex in enumerate(EXAMPLES):
        prompt = builder.build(ex, i)
        assert prompt.endswith("\nAnswer:")
        assert ", ".join(ex.history) in prompt and ", ".join(ex.candidates) in prompt
        assert "{" not in prompt
    assert builder.completion("Björk") == " Björk"


def test_paraphrase_choice_is_seeded_per_index():
    builder = PromptBuilder("music", seed=0)
    chosen = {builder.template_index(i) for i in range(60)}
    assert chosen == set(range(len(TEMPLATES["music"])))
    again = PromptBuilder("music", seed=0)
    assert [builder.build(EXAMPLES[0], i) for i in range(20)] == [again.build(EXAMPLES[0], i) for i in range(20)]
    other = PromptBuilder("music", seed=5)
    assert [builder.template_index(i) for i in range(40)] != [other.template_index(i) for i in range(40)]


def test_conversational_and_custom_template():
    builder = PromptBuilder(template="Seen: {history}\nPick from: {candidates}", conversational=True)
    messages = builder.build(EXAMPLES[0], 0)
    assert messages == [{"role": "user", "content": "Seen: Muse, Air\nPick from: Moby, Björk, Portishead, Slayer"}]
    assert builder.completion("Björk") == [{"role": "assistant", "content": "Björk"}]

    # A template that already ends with the cue is not given a second one; braces in names are left alone.
    plain = PromptBuilder(template="H={history} C={candidates} Answer:")
    ex = RecExample(["{candidates}"], ["a", "b"], "a")
    assert plain.build(ex, 0) == "H={candidates} C=a, b Answer:"

    with pytest.raises(ValueError, match="lacks the placeholder"):
        PromptBuilder(template="no placeholders here")
    with pytest.raises(ValueError, match="unknown domain"):
        PromptBuilder("podcasts")


def test_sft_dataset():
    builder = PromptBuilder("music")
    ds = sft_dataset(EXAMPLES, builder)
    assert ds.column_names == ["prompt", "completion"]
    assert ds[1]["prompt"] == builder.build(EXAMPLES[1], 1)
    assert ds[1]["completion"] == " Pixies"
    conv = sft_dataset(EXAMPLES, PromptBuilder("music", conversational=True))
    assert conv[2]["completion"] == [{"role": "assistant", "content": "Shakira"}]


def test_preference_dataset_all_and_sampled_negatives():
    builder = PromptBuilder("music")
    full = preference_dataset(EXAMPLES, builder)
    assert full.column_names == ["prompt", "chosen", "rejected"]
    assert full[0]["chosen"] == " Björk"
    assert full[0]["rejected"] == [" Moby", " Portishead", " Slayer"]

    sampled = preference_dataset(EXAMPLES, builder, num_negatives=2, seed=0)
    for ex, row in zip(EXAMPLES, sampled):
        assert len(row["rejected"]) == 2 and len(set(row["rejected"])) == 2
        assert " " + ex.target not in row["rejected"]
        assert {r[1:] for r in row["rejected"]} <= set(ex.candidates)
    assert sampled["rejected"] == preference_dataset(EXAMPLES, builder, num_negatives=2, seed=0)["rejected"]
    draws = {tuple(sample_negatives(EXAMPLES[0], 0, 2, seed)) for seed in range(20)}
    assert len(draws) > 1

    with pytest.raises(ValueError, match="row 0: num_negatives=5"):
        preference_dataset(EXAMPLES, builder, num_negatives=5)


# --------------------------------------------------------------------------------------------- history labels
@pytest.fixture(scope="module")
def item_tokenizer():
    from trl_dynamicpo.recsys import sample_catalogue
    from trl_dynamicpo.tiny import build_tokenizer

    names = {n for ex in EXAMPLES for n in (*ex.history, *ex.candidates)} | set(sample_catalogue()[:200])
    corpus = [PromptBuilder("music").build(ex, i) + " " + ex.target for i, ex in enumerate(EXAMPLES)] * 20
    return build_tokenizer(corpus, vocab_size=400, items=sorted(names))


def _labelled_text(tokenizer, row) -> list[str]:
    return [tokenizer.decode([t]) for t, label in zip(row["input_ids"], row["labels"]) if label != -100]


@pytest.mark.parametrize("conversational", [False, True])
def test_history_loss_labels_history_items_and_answer_only(item_tokenizer, conversational):
    from trl_dynamicpo.preprocessing import tokenize_completions

    builder = PromptBuilder(template="History: {history}.\nCandidates: {candidates}.", separator=",",
                            conversational=conversational)  # fmt: skip
    rows = sft_dataset(EXAMPLES, builder, history_loss=True, tokenizer=item_tokenizer)
    assert rows.column_names == ["input_ids", "labels"]
    for i, ex in enumerate(EXAMPLES):
        row = rows[i]
        prompt_ids, (answer_ids,) = tokenize_completions(
            item_tokenizer, builder.build(ex, i), [builder.completion(ex.target)], add_eos=True
        )
        assert row["input_ids"] == prompt_ids + answer_ids  # the trainers' tokenization
        assert row["labels"][len(prompt_ids):] == answer_ids  # the whole answer (and EOS) is labelled
        labelled_prompt = [item_tokenizer.decode([t]) for t, label in zip(prompt_ids, row["labels"]) if label != -100]
        assert [s.strip() for s in labelled_prompt] == ex.history[1:]  # items 2..n; the first has no predecessor
        assert not set(labelled_prompt) & set(ex.candidates)  # never a candidate list


def test_history_loss_off_keeps_the_prompt_completion_format():
    rows = sft_dataset(EXAMPLES, PromptBuilder("music"))
    assert rows.column_names == ["prompt", "completion"] and rows[0]["completion"] == " Björk"


def test_history_loss_with_multi_token_names_labels_every_piece():
    from trl_dynamicpo.preprocessing import tokenize_completions
    from trl_dynamicpo.tiny import build_tokenizer

    corpus = [PromptBuilder("music").build(ex, i) for i, ex in enumerate(EXAMPLES)] * 10
    plain_bpe = build_tokenizer(corpus, vocab_size=120)  # no item tokens: names split into several pieces
    builder = PromptBuilder(template="Seen: {history}. Pick: {candidates}.")
    example = EXAMPLES[2]  # history Pixies, Air, Moby; candidates Shakira, Muse, Enigma, Madonna
    row = sft_dataset([example], builder, history_loss=True, tokenizer=plain_bpe)[0]
    prompt_ids, _ = tokenize_completions(plain_bpe, builder.build(example, 0), [" Shakira"], add_eos=True)
    pieces = [plain_bpe.decode([t]) for t, label in zip(prompt_ids, row["labels"]) if label != -100]
    assert len(pieces) > 2  # several tokens per name
    assert "".join(pieces).split() == ["Air", "Moby"]  # "Pixies" (first) unlabelled, no separator, no candidate


def test_history_loss_needs_a_fast_tokenizer():
    with pytest.raises(ValueError, match="fast tokenizer"):
        sft_dataset(EXAMPLES, PromptBuilder("music"), history_loss=True)


def test_hard_negatives_are_the_highest_scored_non_targets():
    example = EXAMPLES[0]  # candidates Moby, Björk (target), Portishead, Slayer
    scores = [-3.0, -0.5, -1.0, -1.0]
    assert sample_negatives(example, 0, 2, scores=scores) == ["Portishead", "Slayer"]  # tie: candidate order
    assert sample_negatives(example, 0, 1, scores=[-0.1, -9.0, -5.0, -2.0]) == ["Moby"]
    rows = preference_dataset(EXAMPLES, PromptBuilder("music"), num_negatives=2,
                              scores=[scores, [0, 1, 2, 3], [3, 2, 1, 0]])  # fmt: skip
    assert rows["rejected"] == [[" Portishead", " Slayer"], [" The Cure", " Air"], [" Muse", " Enigma"]]
    with pytest.raises(ValueError, match="3 scores for 4 candidates"):
        sample_negatives(example, 0, 2, scores=scores[:3])
    with pytest.raises(ValueError, match="score rows"):
        preference_dataset(EXAMPLES, PromptBuilder("music"), num_negatives=2, scores=[scores])


def test_rejected_items_are_used_as_given_and_topped_up():
    rows = preference_dataset(EXAMPLES, PromptBuilder("music"), num_negatives=2, seed=3,
                              rejected_items=[["Air", "Björk", "Air"], ["Nirvana", "Muse", "Coldplay"], []])  # fmt: skip
    first, second, third = rows["rejected"]
    assert first[0] == " Air" and len(first) == 2 and first[1] in {" Moby", " Portishead", " Slayer"}  # target, repeat out
    assert second == [" Nirvana", " Muse"]  # not candidates: the model's own wrong answers
    assert len(third) == 2 and set(third) <= {" Muse", " Enigma", " Madonna"}  # only seeded candidates
    again = preference_dataset(EXAMPLES, PromptBuilder("music"), num_negatives=2, seed=3,
                               rejected_items=[["Air", "Björk", "Air"], ["Nirvana", "Muse", "Coldplay"], []])  # fmt: skip
    assert again["rejected"] == rows["rejected"]
