"""Score many completions of a prompt with one forward pass per batch of prompts (the packed layout)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .compat import attention_implementation
from .packing import DataCollatorForMultiNegative, completion_logps, ensure_fused_lm_head, resolve_shared_prefix
from .preprocessing import is_conversational_prompt, tokenize_completions


@torch.no_grad()
def score_completions(
    model,
    tokenizer,
    prompts: list,
    completions: list[list],
    *,
    batch_size: int = 8,
    shared_prefix: bool = True,
    show_progress: bool = True,
    desc: str = "Scoring",
) -> list[list[float]]:
    """Summed log-probability of every completion after its prompt: `log pi(completion | prompt)`.

    Tokenization is the trainer's (TRL's common-prefix convention, EOS appended to standard-format completions),
    so scores match the quantities DynamicPO trains on. With `shared_prefix` each prompt is run once for all its
    completions, where that gives the naive rows' scores (`trl_dynamicpo.packing.packing_obstacle`: eager or sdpa
    attention, a verified architecture without convolution / state-space layers or ALiBi); otherwise (with one
    warning) each completion gets its own row.

    Args:
        model: a causal LM (PEFT-wrapped models work). It runs in eval mode (its mode is restored afterwards) and
            is given TRL's fused LM head if it has none.
        tokenizer: its tokenizer.
        prompts: N prompts, strings or message lists.
        completions: N lists of completions (strings, or message lists for conversational prompts); the lists may
            have different lengths.
        batch_size: prompts per forward pass.
        shared_prefix: pack each prompt with all its completions in one row (where exact).
        show_progress: show a progress bar.
        desc: progress bar label.

    Returns:
        N lists of floats, aligned with `completions`.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completion lists.")
    was_training = model.training
    model.eval()
    ensure_fused_lm_head(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = getattr(model, "module", model).config
    shared_prefix = resolve_shared_prefix(config, attention_implementation(model), shared_prefix)
    collator = DataCollatorForMultiNegative(pad_token_id=pad_id, shared_prefix=shared_prefix)
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=not show_progress):
        examples = []
        for prompt, comps in zip(prompts[start : start + batch_size], completions[start : start + batch_size]):
            if not comps:
                raise ValueError(f"Prompt {start + len(examples)} has no completions to score.")
            prompt_ids, ids = tokenize_completions(
                tokenizer, prompt, list(comps), add_eos=not is_conversational_prompt(prompt)
            )
            examples.append({"prompt_ids": prompt_ids, "chosen_ids": ids[0], "rejected_ids": ids[1:]})
        batch = {k: v.to(device) for k, v in collator(examples).items()}
        logps = completion_logps(model, batch).float().cpu()
        scores.extend(row[: 1 + len(ex["rejected_ids"])] for row, ex in zip(logps.tolist(), examples))
    model.train(was_training)
    return scores
