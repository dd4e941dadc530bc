"""Text classification with nn.EmbeddingBag, in the shape of the PyTorch "Text classification with
the torchtext library" tutorial (without torchtext): a vocabulary built from a Counter, offsets
for variable-length texts, a collate_fn, SGD with StepLR and gradient clipping.

Unseeded on purpose: the synthetic "news" texts, the vocabulary order (a set of words, so it depends
on the hash seed), the init and the batch order all change on every run.
DETRUN_CORPUS_PERTURB_STEP=k nudges one weight before the k-th optimizer step.
"""
import hashlib
import os
import random
from collections import Counter

import torch
from torch import nn
from torch.utils.data import DataLoader

TOPICS = {
    0: {"match", "goal", "team", "league", "coach"},
    1: {"market", "stock", "bank", "profit", "trade"},
    2: {"chip", "software", "robot", "cloud", "code"},
}
FILLER = ["the", "a", "on", "in", "today", "new", "big", "says", "after", "report"]


def make_text(label):
    words = random.sample(sorted(TOPICS[label]), 2) + random.choices(FILLER, k=random.randint(3, 9))
    random.shuffle(words)
    return " ".join(words)


train_iter = [(label, make_text(label)) for label in random.choices(list(TOPICS), k=600)]
counter = Counter(word for _, text in train_iter for word in text.split())
vocab = {word: i + 1 for i, word in enumerate({w for w in counter})}  # set order: hash seed dependent
vocab["<unk>"] = 0


def collate_batch(batch):
    label_list, text_list, offsets = [], [], [0]
    for label, text in batch:
        label_list.append(label)
        ids = torch.tensor([vocab.get(w, 0) for w in text.split()], dtype=torch.int64)
        text_list.append(ids)
        offsets.append(ids.size(0))
    return torch.tensor(label_list), torch.cat(text_list), torch.tensor(offsets[:-1]).cumsum(dim=0)


class TextClassificationModel(nn.Module):
    def __init__(self, vocab_size, embed_dim, num_class):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, embed_dim)
        self.fc = nn.Linear(embed_dim, num_class)

    def forward(self, text, offsets):
        return self.fc(self.embedding(text, offsets))


model = TextClassificationModel(len(vocab), 16, len(TOPICS))
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1.0, gamma=0.1)
loader = DataLoader(train_iter, batch_size=32, shuffle=True, collate_fn=collate_batch)
perturb_step = int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0"))

step = 0
for epoch in range(1, 4):
    total_acc, total_count = 0, 0
    for label, text, offsets in loader:
        optimizer.zero_grad()
        predicted_label = model(text, offsets)
        loss = criterion(predicted_label, label)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        step += 1
        if step == perturb_step:
            with torch.no_grad():
                model.fc.weight[0, 0] += 1e-3
        optimizer.step()
        total_acc += (predicted_label.argmax(1) == label).sum().item()
        total_count += label.size(0)
    scheduler.step()
    print(f"| epoch {epoch:3d} | accuracy {total_acc / total_count:8.3f}")

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"final loss {loss.item():.6f}")
print(f"weights sha256 {digest.hexdigest()}")
