"""Prompt templates for LLM-based sequential recommendation.

Text boundary convention (used by every dataset, scorer and evaluator in this package):

- Standard (plain-text) format: the prompt ends with the answer cue ``"Answer:"`` (no trailing space) and the
  completion is ``" " + item name`` (one leading space, no EOS: trainers and scorers append EOS themselves). The
  prompt therefore ends on a token boundary for byte-level BPE tokenizers, and the completion's first token
  carries the space, as it would in running text.
- Conversational format: the prompt is ``[{"role": "user", "content": body}]`` without the answer cue (the chat
  template's assistant header plays that role) and the completion is ``[{"role": "assistant", "content": item}]``
  with the bare item name.

History and candidates are rendered as names joined by ``", "`` (history oldest first). Each domain has a few
paraphrases written for this package; one is chosen per prompt from the builder's seed and the prompt's row index,
so a given (seed, index) always renders the same text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ._rng import SALT_PROMPT, stream
from .readers import RecExample


ANSWER_CUE = "Answer:"

# {history} and {candidates} are replaced by the joined names; nothing else in a template is interpreted.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "music": (
        "A listener played these artists, oldest first: {history}.\n"
        "Which one of the following artists will they play next? {candidates}.\n"
        "Reply with one artist name from that list.",
        "Listening history (earliest to latest): {history}.\n"
        "Candidate artists: {candidates}.\n"
        "Name the single candidate this user is most likely to listen to next.",
        "Here is the order in which a user discovered artists: {history}.\n"
        "Recommend the next artist for them, choosing exactly one of: {candidates}.",
    ),
    "books": (
        "A reader finished these books, oldest first: {history}.\n"
        "Which one of the following books will they read next? {candidates}.\n"
        "Reply with one title from that list.",
        "Reading history (earliest to latest): {history}.\n"
        "Candidate books: {candidates}.\n"
        "Name the single candidate this reader is most likely to pick up next.",
        "These are the books a user rated, in order: {history}.\n"
        "Recommend their next book, choosing exactly one of: {candidates}.",
    ),
    "games": (
        "A player played these games, oldest first: {history}.\n"
        "Which one of the following games will they play next? {candidates}.\n"
        "Reply with one game title from that list.",
        "Gaming history (earliest to latest): {history}.\n"
        "Candidate games: {candidates}.\n"
        "Name the single candidate this player is most likely to try next.",
        "Here are the games a user bought, in order: {history}.\n"
        "Recommend their next game, choosing exactly one of: {candidates}.",
    ),
    "movies": (
        "A viewer watched these movies, oldest first: {history}.\n"
        "Which one of the following movies will they watch next? {candidates}.\n"
        "Reply with one title from that list.",
        "Viewing history (earliest to latest): {history}.\n"
        "Candidate movies: {candidates}.\n"
        "Name the single candidate this viewer is most likely to watch next.",
        "These are the films a user rated, in order: {history}.\n"
        "Recommend their next film, choosing exactly one of: {candidates}.",
    ),
    "generic": (
        "A user interacted with these items, oldest first: {history}.\n"
        "Which one of the following items will they choose next? {candidates}.\n"
        "Reply with one item name from that list.",
        "Interaction history (earliest to latest): {history}.\n"
        "Candidate items: {candidates}.\n"
        "Name the single candidate this user is most likely to choose next.",
        "Here is what a user picked, in order: {history}.\n"
        "Recommend the next item for them, choosing exactly one of: {candidates}.",
    ),
}

_PLACEHOLDER = re.compile(r"\{(history|candidates)\}")


def render_template(template: str, history: Sequence[str], candidates: Sequence[str], separator: str = ", ") -> str:
    """Fill `{history}` and `{candidates}` in `template` with the names joined by `separator` (single pass)."""
    return render_template_with_spans(template, history, candidates, separator)[0]


def render_template_with_spans(
    template: str, history: Sequence[str], candidates: Sequence[str], separator: str = ", "
) -> tuple[str, list[tuple[int, int]]]:
    """`render_template`, plus the character span `(start, end)` of every history item in the rendered text, in
    history order (a template that repeats `{history}` gives each occurrence's spans)."""
    values = {"history": history, "candidates": candidates}
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length, last = 0, 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(template[last : match.start()])
        length += match.start() - last
        for j, name in enumerate(values[match.group(1)]):
            if j:
                parts.append(separator)
                length += len(separator)
            if match.group(1) == "history":
                spans.append((length, length + len(name)))
            parts.append(name)
            length += len(name)
        last = match.end()
    parts.append(template[last:])
    return "".join(parts), spans


class PromptBuilder:
    """Turn `RecExample`s into prompts and item names into completions, in standard or conversational format.

    Args:
        domain: one of `TEMPLATES` ("music", "books", "games", "movies", "generic"); ignored when `template` is set.
        template: your own template, or several (one is chosen per prompt), each with `{history}` and
            `{candidates}`. In standard format the answer cue is appended on a new line unless the template
            already ends with it.
        seed: seed of the per-prompt paraphrase choice.
        conversational: build chat messages instead of plain text.
        separator: how names are joined in the prompt.
        answer_cue: the text that ends a standard-format prompt (`"Answer:"`); `""` to end with the template.
    """

    def __init__(
        self,
        domain: str = "music",
        template: str | Sequence[str] | None = None,
        seed: int = 0,
        conversational: bool = False,
        *,
        separator: str = ", ",
        answer_cue: str = ANSWER_CUE,
    ):
        if template is None:
            if domain not in TEMPLATES:
                raise ValueError(f"unknown domain {domain!r}; choose one of {sorted(TEMPLATES)} or pass a template")
            templates = TEMPLATES[domain]
        else:
            templates = (template,) if isinstance(template, str) else tuple(template)
            if not templates:
                raise ValueError("template: empty list of templates")
            for text in templates:
                missing = [p for p in ("{history}", "{candidates}") if p not in text]
                if missing:
                    raise ValueError(f"template {text!r} lacks the placeholder(s) {', '.join(missing)}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.domain = domain
        self.templates = templates
        self.seed = seed
        self.conversational = conversational
        self.separator = separator
        self.answer_cue = answer_cue

    def template_index(self, index: int) -> int:
        """Which paraphrase prompt `index` uses."""
        if len(self.templates) == 1:
            return 0
        return int(stream(self.seed, index, SALT_PROMPT).integers(0, len(self.templates)))

    def text(self, example: RecExample, index: int) -> str:
        """The prompt body (without the answer cue) for `example` at row `index`."""
        return self.text_with_spans(example, index)[0]

    def text_with_spans(self, example: RecExample, index: int) -> tuple[str, list[tuple[int, int]]]:
        """The prompt body and the character span of each history item in it (see `render_template_with_spans`).

        The body is the start of the standard-format prompt and the content of the conversational user message,
        so the spans hold in both.
        """
        template = self.templates[self.template_index(index)]
        text, spans = render_template_with_spans(template, example.history, example.candidates, self.separator)
        body = text.rstrip()
        return body, [(a, b) for a, b in spans if b <= len(body)]

    def build(self, example: RecExample, index: int) -> str | list[dict[str, Any]]:
        """The prompt for `example` at row `index`: a string ending with the answer cue, or a user message list."""
        body = self.text(example, index)
        if self.conversational:
            return [{"role": "user", "content": body}]
        if not self.answer_cue or body.endswith(self.answer_cue):
            return body
        return f"{body}\n{self.answer_cue}"

    def completion(self, item: str) -> str | list[dict[str, Any]]:
        """The completion naming `item`: `" " + item`, or an assistant message with the bare name."""
        if self.conversational:
            return [{"role": "assistant", "content": item}]
        return " " + item

    def __repr__(self) -> str:
        return (
            f"PromptBuilder(domain={self.domain!r}, templates={len(self.templates)}, seed={self.seed}, "
            f"conversational={self.conversational})"
        )
