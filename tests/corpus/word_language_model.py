"""LSTM word-level language model in the shape of pytorch/examples' word_language_model/main.py,
on a synthetic corpus: clipped gradients, plain SGD with the learning rate annealed on validation
loss, and Ctrl-C to stop training early (`except KeyboardInterrupt`). Unlike the example it steps
with torch.optim.SGD (same update), so each step is checked.

Unseeded on purpose (the example seeds; this one does not). Training runs for a while, so a Ctrl-C
arrives mid-training; where it lands is a matter of timing.
DETRUN_CORPUS_PERTURB_STEP=k nudges one weight just before the k-th optimizer step.
"""
import argparse
import hashlib
import math
import os
import random

import torch
import torch.nn as nn

parser = argparse.ArgumentParser(description='PyTorch LSTM Language Model (synthetic corpus)')
parser.add_argument('--emsize', type=int, default=32)
parser.add_argument('--nhid', type=int, default=32)
parser.add_argument('--nlayers', type=int, default=2)
parser.add_argument('--lr', type=float, default=20)
parser.add_argument('--clip', type=float, default=0.25)
parser.add_argument('--epochs', type=int, default=6)
parser.add_argument('--batch_size', type=int, default=16)
parser.add_argument('--bptt', type=int, default=16)
parser.add_argument('--dropout', type=float, default=0.2)
parser.add_argument('--log-interval', type=int, default=10)
parser.add_argument('--save', type=str, default='model.pt')
args = parser.parse_args()
perturb_step = int(os.environ.get('DETRUN_CORPUS_PERTURB_STEP', '0'))


class Corpus:
    """A made-up language: sentences from a small grammar, sampled with `random`."""

    def __init__(self):
        subjects, verbs, objects = ['the cat', 'a dog', 'my model'], ['eats', 'sees', 'trains'], ['fish', 'data', 'a ball']
        self.words = ['<eos>']
        self.idx = {'<eos>': 0}

        def tokenize(n):
            ids = []
            for _ in range(n):
                for word in f"{random.choice(subjects)} {random.choice(verbs)} {random.choice(objects)}".split() + ['<eos>']:
                    if word not in self.idx:
                        self.idx[word] = len(self.words)
                        self.words.append(word)
                    ids.append(self.idx[word])
            return torch.tensor(ids, dtype=torch.long)

        self.train, self.valid = tokenize(1200), tokenize(150)


class RNNModel(nn.Module):
    def __init__(self, ntoken, ninp, nhid, nlayers, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.nlayers, self.nhid = nlayers, nhid

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        decoded = self.decoder(self.drop(output))
        return nn.functional.log_softmax(decoded.view(-1, decoded.size(-1)), dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    return data.narrow(0, 0, nbatch * bsz).view(bsz, -1).t().contiguous()


def repackage_hidden(h):
    return tuple(v.detach() for v in h) if isinstance(h, tuple) else h.detach()


def get_batch(source, i):
    seq_len = min(args.bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


corpus = Corpus()
train_data = batchify(corpus.train, args.batch_size)
val_data = batchify(corpus.valid, 10)
ntokens = len(corpus.words)
model = RNNModel(ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
criterion = nn.NLLLoss()
lr = args.lr
optimizer = torch.optim.SGD(model.parameters(), lr=lr)
updates = 0


def evaluate(data_source):
    model.eval()
    total_loss = 0.
    hidden = model.init_hidden(10)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, args.bptt):
            data, targets = get_batch(data_source, i)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * criterion(output, targets).item()
    return total_loss / (len(data_source) - 1)


def train(epoch):
    global updates
    model.train()
    total_loss = 0.
    hidden = model.init_hidden(args.batch_size)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        data, targets = get_batch(train_data, i)
        optimizer.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        updates += 1
        if updates == perturb_step:
            with torch.no_grad():
                model.decoder.weight[0, 0] += 1e-3
        optimizer.step()
        total_loss += loss.item()
        if batch % args.log_interval == 0 and batch > 0:
            cur_loss = total_loss / args.log_interval
            print('| epoch {:3d} | {:5d} batches | lr {:02.2f} | loss {:5.2f} | ppl {:8.2f} | updates {}'.format(
                epoch, batch, lr, cur_loss, math.exp(cur_loss), updates), flush=True)
            total_loss = 0


best_val_loss = None
try:
    for epoch in range(1, args.epochs + 1):
        train(epoch)
        val_loss = evaluate(val_data)
        print('-' * 89)
        print('| end of epoch {:3d} | valid loss {:5.2f} | valid ppl {:8.2f}'.format(epoch, val_loss, math.exp(val_loss)))
        print('-' * 89, flush=True)
        if not best_val_loss or val_loss < best_val_loss:
            with open(args.save, 'wb') as f:
                torch.save(model, f)
            best_val_loss = val_loss
        else:
            lr /= 4.0
            for group in optimizer.param_groups:
                group['lr'] = lr
except KeyboardInterrupt:
    print('-' * 89)
    print('Exiting from training early')

digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode() + tensor.numpy().tobytes())
print(f"updates {updates}")
print(f"final loss {evaluate(val_data):.6f}")
print(f"weights sha256 {digest.hexdigest()}")
