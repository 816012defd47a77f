"""A tiny, seeded training script instrumented with flor (used by the demo and the tests).

    python train.py --kwargs lr=0.01 hidden=32 epochs=5
"""

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import flor

parser = argparse.ArgumentParser()
parser.add_argument("--seed", type=int, default=0, help="the script's own flag, beside flor's")
cli, _ = parser.parse_known_args()  # leaves FlorDB-2 style `--hidden 75` to flor.arg
torch.manual_seed(cli.seed)

hidden = flor.arg("hidden", 16)
lr = flor.arg("lr", 0.01)
epochs = flor.arg("epochs", 5)
batch_size = flor.arg("batch_size", 32)

features = torch.randn(512, 20)
target = (features[:, :3].sum(dim=1, keepdim=True) > 0).float()
train = DataLoader(TensorDataset(features[:448], target[:448]), batch_size=batch_size, shuffle=True)
valid = TensorDataset(features[448:], target[448:])

model = nn.Sequential(nn.Linear(20, hidden), nn.ReLU(), nn.Linear(hidden, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
criterion = nn.BCEWithLogitsLoss()

with flor.checkpointing(model=model, optimizer=optimizer):
    for epoch in flor.loop("epoch", range(epochs)):
        for x, y in flor.loop("step", train):
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            flor.log("loss", loss.item())
        with torch.no_grad():
            x, y = valid.tensors
            accuracy = ((model(x) > 0).float() == y).float().mean().item()
        flor.log("accuracy", accuracy)
        print(f"epoch {epoch}: loss {loss.item():.4f} accuracy {accuracy:.3f}")
