"""LightningModule autoencoder in the shape of Lightning's README example, trained by
`L.Trainer` with its defaults: the CSV/TensorBoard logger under lightning_logs/, ModelCheckpoint,
and the progress bar.

Unseeded on purpose (no `L.seed_everything`), so init, data and batch order change on every run.
DETRUN_CORPUS_PERTURB_STEP=k nudges one weight just before the k-th optimizer step
(`on_before_optimizer_step`).
"""
import hashlib
import os

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class LitAutoEncoder(L.LightningModule):
    def __init__(self, perturb_step=0):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
        self.decoder = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 32))
        self.perturb_step = perturb_step
        self.last_loss = None

    def training_step(self, batch, batch_idx):
        (x,) = batch
        z = self.encoder(x)
        x_hat = self.decoder(z)
        loss = nn.functional.mse_loss(x_hat, x)
        self.log("train_loss", loss)
        self.last_loss = loss.item()
        return loss

    def validation_step(self, batch, batch_idx):
        (x,) = batch
        self.log("val_loss", nn.functional.mse_loss(self.decoder(self.encoder(x)), x))

    def on_before_optimizer_step(self, optimizer):
        # global_step counts finished optimizer steps, so this is step global_step + 1.
        if self.global_step + 1 == self.perturb_step:
            with torch.no_grad():
                self.decoder[2].weight[0, 0] += 1e-3

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main():
    data = torch.randn(320, 8) @ torch.randn(8, 32)  # low-rank data an autoencoder can learn
    train = DataLoader(TensorDataset(data[:256]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(data[256:]), batch_size=64)
    model = LitAutoEncoder(int(os.environ.get("DETRUN_CORPUS_PERTURB_STEP", "0")))
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, log_every_n_steps=4)
    trainer.fit(model, train, val)
    print(f"checkpoints: {sorted(os.listdir(trainer.checkpoint_callback.dirpath))}")

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    print(f"final loss {model.last_loss:.6f}")
    print(f"weights sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
