"""`CompactSFTTrainer`: `trl.SFTTrainer` whose fused LM head projects the labelled positions only, on CPU too."""

from __future__ import annotations

import torch.nn.functional as F
from trl import SFTTrainer

from .compat import active_prompt_learning, labelled_positions_only


class CompactSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] with the same loss, gradients and metrics, whose fused LM head is handed the labelled
    positions only (`compat.labelled_positions_only`).

    TRL 1.16 projects only the labelled positions onto the vocabulary on CUDA / XPU, and every position of every row
    elsewhere. With recommendation prompts (a history and 20 candidates, a loss on a few tokens), projecting the
    unlabelled prompt positions is most of the CPU time of SFT. The loss, the token count, `entropy` and
    `mean_token_accuracy` are sums over the labelled positions, so handing the head those positions as one row
    changes none of them. Configurations that need the full rows (`compute_loss_func`, label smoothing, prompt
    learning's virtual tokens, returned outputs) go through `SFTTrainer.compute_loss` unchanged.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        full_rows = (
            return_outputs
            or labels is None
            or self.compute_loss_func is not None
            or self.label_smoother is not None
            or active_prompt_learning(model) is not None
        )
        if full_rows:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        shift_labels = F.pad(labels[:, 1:], (0, 1), value=-100)  # the token each position predicts
        labelled = shift_labels != -100
        compact = {key: value for key, value in inputs.items() if key != "labels"}
        compact["shift_labels"] = shift_labels[labelled][None]
        with labelled_positions_only(model, labelled):
            return super().compute_loss(model, compact, return_outputs, num_items_in_batch)
