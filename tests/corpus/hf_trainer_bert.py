"""Sequence classification with the Hugging Face Trainer, in the shape of the run_glue-style
fine-tuning scripts, on a tiny randomly initialised BERT and synthetic token data (no hub access).

Unseeded on purpose: the Trainer's own `seed` is drawn from the clock, the model init and data come
from torch's unseeded generator, so plain runs differ. Ends with `trainer.save_model()`, which
lists the output directory.
DETRUN_CORPUS_PERTURB_STEP=k nudges one weight just before the k-th optimizer step (a callback).
"""
import hashlib
import os
import time

import torch
from transformers import (BertConfig, BertForSequenceClassification, Trainer, TrainerCallback,
                          TrainingArguments)


class SyntheticPairs(torch.utils.data.Dataset):
    def __init__(self, n, vocab_size, length):
        self.input_ids = torch.randint(5, vocab_size, (n, length))
        # The label is whether token 7 appears: easy to learn, not constant.
        self.input_ids[: n // 2, torch.randint(1, length, (1,)).item()] = 7
        self.labels = (self.input_ids == 7).any(dim=1).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "attention_mask": torch.ones_like(self.input_ids[i]),
                "labels": self.labels[i]}


class PerturbCallback(TrainerCallback):
    """Test hook: nudge one weight before a given optimizer step."""

    def __init__(self, step):
        self.step = step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model.classifier.weight[0, 0] += 1e-3


def main():
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    train_ds = SyntheticPairs(96, config.vocab_size, 16)
    eval_ds = SyntheticPairs(32, config.vocab_size, 16)

    args = TrainingArguments(
        output_dir="hf_out",
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        num_train_epochs=2,
        learning_rate=5e-4,
        logging_steps=3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=int(time.time()) % 10_000,  # "a fresh seed each run"
    )
    callbacks = []
    perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))
    if perturb_step:
        callbacks.append(PerturbCallback(perturb_step))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      callbacks=callbacks)
    result = trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model("hf_final")
    print(f"saved files: {sorted(os.listdir('hf_final'))}")

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    print(f"eval loss {metrics['eval_loss']:.6f}")
    print(f"final loss {result.training_loss:.6f}")
    print(f"weights sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
