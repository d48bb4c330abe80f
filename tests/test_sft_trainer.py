"""`CompactSFTTrainer` is `trl.SFTTrainer` with the fused head handed the labelled positions only: the same losses,
gradients and logged metrics as TRL's own trainer, and one vocabulary projection row per label."""

import copy

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from trl_dynamicpo.sft_trainer import CompactSFTTrainer


ROWS = [
    {"prompt": f"The user listened to {a} and {b}. Next:", "completion": f" {c}"}
    for a, b, c in [("Muse", "Air", "Placebo"), ("Moby", "Pixies", "Shakira"), ("Enigma", "Air", "Slayer"),
                    ("Madonna", "Muse", "Nirvana"), ("Air", "Moby", "Muse"), ("Pixies", "Placebo", "Air")]
]  # fmt: skip


def _trainer(cls, model, tokenizer, tmp_path, **overrides):
    args = SFTConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=3, max_steps=2,
                     logging_steps=1, learning_rate=1e-2, bf16=False, gradient_checkpointing=False, report_to=[],
                     use_cpu=True, save_strategy="no", seed=0, **overrides)  # fmt: skip
    return cls(model=model, args=args, train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)


@pytest.mark.parametrize("overrides", [{}, {"completion_only_loss": False}], ids=["completion", "full-sequence"])
def test_losses_gradients_and_metrics_equal_sft_trainer(tokenizer, make_model, tmp_path, overrides):
    model = make_model(seed=4)
    ours = _trainer(CompactSFTTrainer, copy.deepcopy(model), tokenizer, tmp_path, **overrides)
    trl = _trainer(SFTTrainer, copy.deepcopy(model), tokenizer, tmp_path, **overrides)
    batch = next(iter(trl.get_train_dataloader()))
    for trainer in (ours, trl):
        trainer.model.train()
        trainer.model.zero_grad()
        trainer.compute_loss(trainer.model, dict(batch)).backward()
    assert ours.compute_loss(ours.model, dict(batch)).item() == pytest.approx(
        trl.compute_loss(trl.model, dict(batch)).item(), rel=1e-6
    )
    for (name, a), (_, b) in zip(ours.model.named_parameters(), trl.model.named_parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7, msg=name)
    ours.train()
    trl.train()
    logged = [next(h for h in t.state.log_history if "loss" in h) for t in (ours, trl)]
    for key in ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens"):
        assert logged[0][key] == pytest.approx(logged[1][key], rel=1e-5), key


def test_only_labelled_positions_are_projected(tokenizer, make_model, tmp_path):
    from test_compat import _head_projection_rows

    ours = _trainer(CompactSFTTrainer, make_model(seed=4, hidden_size=16), tokenizer, tmp_path)
    batch = next(iter(ours.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        rows = _head_projection_rows(ours.model, lambda: ours.compute_loss(ours.model, dict(batch)))
    assert rows and set(rows) == {labelled} and labelled < batch["labels"].numel()
