"""A sequence classifier written with torch.nn.LSTM, trained as written and again after
``rnngen.torch.convert(model)``: the same losses for the same seed, and the time of an epoch.

    .venv/bin/python examples/convert_model.py            # 3 epochs each way
    .venv/bin/python examples/convert_model.py --quick    # a short run (the tests run it)

The task: sequences of 10-60 tokens from a vocabulary of 12; the label says whether token 1
occurs more often than token 2.  The model: an embedding, a 2-layer bidirectional nn.LSTM
(dropout 0.1 between the layers) over packed, unsorted variable-length batches, and a linear
readout of the last layer's final states (h_n, both directions).  Nothing in the model's
code changes: ``convert`` swaps the nn.LSTM for rnngen.torch.LSTM with the same weights.

First both models train in float64 from one seed, step by step on the same batches; their
losses agree to 1e-10 (the dropout masks too: rnngen draws torch's masks from the same
generator).  Then each trains in float32 for the epochs asked, timed.
"""
import argparse
import copy
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import rnngen.torch as rt

VOCAB, EMBED, HIDDEN = 12, 32, 64


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED, padding_idx=0)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=2, bidirectional=True,
                            batch_first=True, dropout=0.1)
        self.out = nn.Linear(2 * HIDDEN, 2)

    def forward(self, tokens, lengths):
        packed = pack_padded_sequence(self.embed(tokens), lengths, batch_first=True,
                                      enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)
        return self.out(torch.cat([h_n[-2], h_n[-1]], dim=-1))   # last layer, both ways


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(10, 61, (n,), generator=g)
    seqs = [torch.randint(1, VOCAB, (int(k),), generator=g) for k in lengths]
    labels = torch.tensor([int((s == 1).sum() > (s == 2).sum()) for s in seqs])
    return pad_sequence(seqs, batch_first=True), lengths, labels


def batches(data, batch, seed):
    tokens, lengths, labels = data
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        T = int(lengths[idx].max())
        yield tokens[idx, :T], lengths[idx], labels[idx]


def train(model, data, epochs, batch, seed, max_steps=None):
    """Adam on cross-entropy; the loss of every step and the seconds of every epoch."""
    torch.manual_seed(seed)                      # the dropout masks' generator
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, seconds = [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        for tokens, lengths, labels in batches(data, batch, seed + epoch):
            loss = nn.functional.cross_entropy(model(tokens, lengths), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if max_steps and len(losses) >= max_steps:
                return losses, seconds
        seconds.append(time.perf_counter() - start)
    return losses, seconds


def accuracy(model, data):
    model.eval()
    with torch.no_grad():
        tokens, lengths, labels = data
        acc = (model(tokens, lengths).argmax(-1) == labels).double().mean().item()
    model.train()
    return acc


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--check-steps", type=int, default=20,
                    help="float64 steps compared between the two models")
    ap.add_argument("--quick", action="store_true", help="a short run: 1 epoch of 256")
    a = ap.parse_args(argv)
    if a.quick:
        a.epochs, a.samples, a.check_steps = 1, 256, 8
    data, test = make_data(a.samples, 0), make_data(512, 1)

    # the same losses, step by step, in float64
    torch.manual_seed(0)
    written = Classifier().double()
    converted = rt.convert(copy.deepcopy(written))
    print(f"converted: {type(converted.lstm).__module__}.{type(converted.lstm).__name__}"
          f"{tuple(converted.lstm.state_dict())[:2]}...")
    l_nn, _ = train(written, data, 1, a.batch, seed=7, max_steps=a.check_steps)
    l_rn, _ = train(converted, data, 1, a.batch, seed=7, max_steps=a.check_steps)
    diff = max(abs(p - q) for p, q in zip(l_nn, l_rn))
    print(f"float64, first {len(l_nn)} steps: losses {l_nn[0]:.6f} ... {l_nn[-1]:.6f} "
          f"(nn.LSTM) and {l_rn[0]:.6f} ... {l_rn[-1]:.6f} (rnngen); "
          f"largest difference {diff:.1e}")
    if not diff <= 1e-10:
        raise SystemExit(f"the losses differ by {diff:.1e} (more than 1e-10)")

    # training as usual, float32, timed
    print(f"float32, {a.epochs} epoch(s) of {a.samples} sequences, batch {a.batch}, "
          f"{torch.get_num_threads()} torch threads:")
    for name, convert in (("nn.LSTM", False), ("rnngen.torch (converted)", True)):
        torch.manual_seed(0)
        model = Classifier()
        if convert:
            model = rt.convert(model)
        losses, seconds = train(model, data, a.epochs, a.batch, seed=7)
        per_epoch = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"  {name:26s} last loss {losses[-1]:.4f}, test accuracy "
              f"{accuracy(model, test):.3f}, seconds per epoch: {per_epoch}")


if __name__ == "__main__":
    main()
