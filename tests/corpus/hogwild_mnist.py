"""Hogwild training in the shape of pytorch/examples' mnist_hogwild: the model lives in shared
memory and several `mp.Process` children train it at once, lock-free. The parent only evaluates.

Unseeded: the init, the synthetic data and each child's DataLoader order change on every run (and
the lock-free updates race, so even equal inputs need not give equal weights).
DETRUN_CORPUS_PERTURB_STEP=k: rank 0 nudges one weight just before its k-th optimizer step.
"""
import argparse
import hashlib
import os

import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.fc1 = nn.Linear(6 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = x.view(-1, 6 * 6 * 6)
        x = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(x), dim=1)


def make_dataset(n):
    labels = torch.randint(0, 10, (n,))
    images = torch.rand(n, 1, 16, 16) * 0.3
    for i, label in enumerate(labels.tolist()):
        images[i, 0, label: label + 2, 2:14] += 0.7
    return TensorDataset(images, labels)


def train(rank, args, model, dataset):
    torch.set_num_threads(1)  # as in the example: one thread per hogwild worker
    perturb_step = int(os.environ.get('DETRUN_CORPUS_PERTURB_STEP', '0'))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    step = 0
    for epoch in range(1, args.epochs + 1):
        model.train()
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            step += 1
            if rank == 0 and step == perturb_step:
                with torch.no_grad():
                    model.fc2.weight[0, 0] += 1e-3
            optimizer.step()
        print(f"rank {rank} epoch {epoch} done", flush=True)


def test(model, dataset):
    model.eval()
    with torch.no_grad():
        data, target = dataset.tensors
        output = model(data)
        loss = F.nll_loss(output, target).item()
        correct = output.argmax(dim=1).eq(target).sum().item()
    print(f"Test set: Average loss: {loss:.4f}, Accuracy: {correct}/{len(target)}")
    return loss


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description='PyTorch Hogwild-style Example')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--lr', type=float, default=0.05)
    parser.add_argument('--momentum', type=float, default=0.5)
    parser.add_argument('--num-processes', type=int, default=2)
    args = parser.parse_args()

    dataset = make_dataset(256)
    model = Net()
    # NOTE: this is required for the ``fork`` method to work
    model.share_memory()
    processes = []
    for rank in range(args.num_processes):
        p = mp.Process(target=train, args=(rank, args, model, dataset))
        p.start()
        processes.append(p)
    for p in processes:
        p.join()

    loss = test(model, dataset)
    torch.save(model.state_dict(), "hogwild.pt")
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    print(f"final loss {loss:.6f}")
    print(f"weights sha256 {digest.hexdigest()}")
