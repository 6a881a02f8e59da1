"""Train a user YAML cell in PyTorch: the minimal gated unit (examples/mgu.yaml) on the
adding problem, through rnngen.torch.

    pip install -e '.[torch,examples]'          # torch, tqdm, matplotlib
    python examples/train_adding.py              # 1 to 4 minutes on 2 cores, see below
    python examples/train_adding.py --quick      # a smoke run of about 6 s

On a machine that other processes keep busy, --threads 1 is much faster than the libraries'
default of one thread per core: every step of a recurrent loop waits for its slowest thread.
On 2 cores shared with other busy processes the defaults took 3.5 to 4.5 minutes (epochs of
5 to 30 s, as the other processes came and went), and 1 minute with --threads 1.

The adding problem (Hochreiter & Schmidhuber 1997, in the form of Le et al. 2015): each
sequence has two channels, numbers drawn uniformly from [0, 1] and a marker channel that is 1
at exactly two steps (one in the first half of the sequence, one in the second) and 0
elsewhere; the target is the sum of the two marked numbers. Predicting the mean 1.0 gives
the variance of that sum, 1/6 = 0.167, as mean squared error: a model has learnt something
only below that line. Here the sequences have lengths drawn from [--min-len, --max-len], are
padded at the end to the longest of their batch and masked, so every sample is read to its
own last step.

The model: rnngen.torch.Recurrent over the MGU cell (the last real step's state, as masked
steps keep the state), a linear readout, MSE, Adam with the gradient clipped to norm 1. A
tqdm bar shows the loss and steps/s; at the end the script writes the loss curve (--png,
default the temporary folder's rnngen-adding_loss.png) and
times an epoch of the same model with the cell written as a PyTorch step loop (StepLoopMGU,
the same equations and weights) and with torch.nn.GRU, a different cell with the same
interface: over packed sequences (PackedGRU, the usual way) and over the padded batch read
at each sample's last real step (PaddedGRU, faster on the CPU).
"""
import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import rnngen
import rnngen.torch as rt

BASELINE = 1 / 6          # MSE of predicting 1.0: the variance of the sum of two U(0, 1)


# -- data ---------------------------------------------------------------------------------
# the loss curve's default place: the system's temporary folder, not wherever the script runs
DEFAULT_PNG = Path(tempfile.gettempdir()) / "rnngen-adding_loss.png"

def adding_problem(n: int, min_len: int, max_len: int, rng: np.random.Generator):
    """n samples of the adding problem, padded at the end to max_len.
    Returns x (n, max_len, 2) float32 [numbers, markers], mask (n, max_len) bool (True on
    real steps) and the targets y (n,) float32."""
    lengths = rng.integers(min_len, max_len + 1, size=n)
    x = np.zeros((n, max_len, 2), np.float32)
    mask = np.arange(max_len)[None, :] < lengths[:, None]
    x[:, :, 0] = rng.random((n, max_len)) * mask
    rows = np.arange(n)
    first = (rng.random(n) * (lengths // 2)).astype(int)                     # [0, L/2)
    second = lengths // 2 + (rng.random(n) * (lengths - lengths // 2)).astype(int)  # [L/2, L)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = x[rows, first, 0] + x[rows, second, 0]
    return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(y)


def batches(x, mask, y, batch_size: int, shuffle: torch.Generator = None):
    """(x, mask, y) batches, each cut to the longest sequence in it."""
    n = len(y)
    order = torch.randperm(n, generator=shuffle) if shuffle is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        m = mask[idx]
        T = int(m.sum(1).max())
        yield x[idx, :T].contiguous(), m[:, :T].contiguous(), y[idx]


# -- the models -----------------------------------------------------------------------------
class AddingModel(nn.Module):
    """A recurrent layer's state after each sample's last real step, then a linear readout."""

    def __init__(self, rnn: nn.Module, hidden: int):
        super().__init__()
        self.rnn = rnn
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x, mask):
        return self.readout(self.rnn(x, mask)).squeeze(-1)


def rnngen_mgu(hidden: int, seed: int) -> nn.Module:
    """The MGU of examples/mgu.yaml as a torch module over rnngen's compiled kernels."""
    return rt.Recurrent(rnngen.load_example("mgu"), input_dim=2, output_dim=hidden, seed=seed)


class StepLoopMGU(nn.Module):
    """The equations of examples/mgu.yaml as a PyTorch step loop, with the same parameter
    names; a masked step keeps the state. The input products of both gates run once over
    all steps, before the loop (as one writes a fast eager loop)."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        D, H = input_dim, hidden
        for name, shape in (("W_f", (D, H)), ("U_f", (H, H)), ("b_f", (H,)),
                            ("W_h", (D, H)), ("U_h", (H, H)), ("b_h", (H,))):
            self.register_parameter(name, nn.Parameter(torch.zeros(shape)))

    def forward(self, x, mask):
        B, T, _ = x.shape
        xf = x @ self.W_f + self.b_f            # (B, T, H)
        xh = x @ self.W_h + self.b_h
        h = x.new_zeros((B, self.U_f.shape[0]))
        keep = mask.unsqueeze(-1)               # (B, T, 1)
        for t in range(T):
            f = torch.sigmoid(xf[:, t] + h @ self.U_f)
            hh = torch.tanh(xh[:, t] + (f * h) @ self.U_h)
            h = torch.where(keep[:, t], (1 - f) * h + f * hh, h)
        return h


class PaddedGRU(nn.Module):
    """torch.nn.GRU over the padded batch, read at each sample's last real step (the padding
    comes after it, so it cannot change that output)."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True)

    def forward(self, x, mask):
        y, _ = self.gru(x)
        last = mask.sum(1) - 1
        return y[torch.arange(len(y)), last]


class PackedGRU(nn.Module):
    """torch.nn.GRU over packed sequences (cuDNN/oneDNN's cell, not the MGU): its final
    state is each sample's state after its last real step."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True)

    def forward(self, x, mask):
        lengths = mask.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=False)
        _, h_n = self.gru(packed)
        return h_n[0]


# -- training -------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, data, batch_size: int) -> float:
    total, n = 0.0, 0
    for x, m, y in batches(*data, batch_size):
        total += float(((model(x, m) - y) ** 2).sum())
        n += len(y)
    return total / n


def train_step(model, opt, x, mask, y, clip: float) -> float:
    """One step of Adam on the batch's mean squared error; returns that error."""
    loss = nn.functional.mse_loss(model(x, mask), y)
    opt.zero_grad()
    loss.backward()
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def train(model, train_data, val_data, args):
    """Adam on MSE for args.epochs epochs. Returns the loss of every step, the validation
    loss before training and after each epoch, and each epoch's training time in s."""
    from tqdm import tqdm
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    shuffle = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train_data[2]) / args.batch_size)
    step_losses, val_losses, epoch_s = [], [evaluate(model, val_data, args.batch_size)], []
    bar = tqdm(total=args.epochs * steps_per_epoch, unit="step", dynamic_ncols=True,
               disable=args.no_progress)
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for x, m, y in batches(*train_data, args.batch_size, shuffle):
            step_losses.append(train_step(model, opt, x, m, y, args.clip))
            bar.update()
            bar.set_postfix(loss=f"{np.mean(step_losses[-20:]):.4f}", refresh=False)
        epoch_s.append(time.perf_counter() - t0)
        val_losses.append(evaluate(model, val_data, args.batch_size))
        bar.write(f"epoch {epoch:3d}: train loss {np.mean(step_losses[-steps_per_epoch:]):.4f}"
                  f"  validation loss {val_losses[-1]:.4f}  ({epoch_s[-1]:.1f} s)")
    bar.close()
    return step_losses, val_losses, epoch_s


def time_epochs(models: dict, train_data, args) -> dict:
    """Seconds per training epoch (forward, backward, Adam) of each model: the median time
    of a step over args.time_steps training batches, after two of warm-up, times the steps
    of an epoch. The models take turns on each batch, so a machine that gets busier or
    quieter meanwhile slows or speeds all of them alike."""
    opts = {name: torch.optim.Adam(m.parameters(), lr=args.lr) for name, m in models.items()}
    times = {name: [] for name in models}
    shuffle = torch.Generator().manual_seed(args.seed + 1)
    names = list(models)
    for i, (x, m, y) in enumerate(batches(*train_data, args.batch_size, shuffle)):
        if i >= args.time_steps + 2:
            break
        for name in names[i % len(names):] + names[:i % len(names)]:
            t0 = time.perf_counter()
            train_step(models[name], opts[name], x, m, y, args.clip)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    steps = math.ceil(len(train_data[2]) / args.batch_size)
    return {name: float(np.median(t)) * steps for name, t in times.items()}


def plot(step_losses, val_losses, steps_per_epoch: int, path: Path, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = np.arange(1, len(step_losses) + 1)
    ax.plot(steps, step_losses, color="tab:blue", alpha=0.25, lw=0.6, label="training batch")
    k = max(1, min(50, len(step_losses) // 10))
    smooth = np.convolve(step_losses, np.ones(k) / k, mode="valid")
    ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=1.4, label=f"training, mean of {k}")
    ax.plot(np.arange(len(val_losses)) * steps_per_epoch, val_losses, "o-", color="tab:orange",
            ms=3, lw=1.2, label="validation")
    ax.axhline(BASELINE, color="gray", ls="--", lw=1, label="predict 1.0 (1/6)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared error")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 10, "
                   "--quick 3)")
    p.add_argument("--min-len", type=int, default=None, help="shortest sequence (default "
                   "100, --quick 10)")
    p.add_argument("--max-len", type=int, default=None, help="longest sequence (default "
                   "200, --quick 20)")
    p.add_argument("--hidden", type=int, default=None, help="units of the cell (default 64, "
                   "--quick 32)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--train-size", type=int, default=None, help="training samples (default "
                   "20000, --quick 4000)")
    p.add_argument("--val-size", type=int, default=1000, help="validation samples (default "
                   "1000)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default "
                   "3e-3, --quick 1e-2)")
    p.add_argument("--clip", type=float, default=1.0, help="clip the gradient to this norm "
                   "(default 1; 0: no clipping)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and "
                   "the shuffling (default 0)")
    p.add_argument("--png", type=Path, default=DEFAULT_PNG,
                   help=f"where the loss curve goes (default {DEFAULT_PNG}, outside the "
                   "current folder)")
    p.add_argument("--time-steps", type=int, default=None, help="steps timed per model for "
                   "the epoch times at the end (default 20, --quick 3)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of torch and of "
                   "rnngen's kernels (default 0: each library's own default)")
    p.add_argument("--quick", action="store_true", help="a small run, well under a minute")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    defaults = dict(epochs=(10, 3), min_len=(100, 10), max_len=(200, 20), hidden=(64, 32),
                    train_size=(20000, 4000), time_steps=(20, 3), lr=(3e-3, 1e-2))
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if not 2 <= args.min_len <= args.max_len:
        p.error(f"need 2 <= --min-len <= --max-len, got {args.min_len} and {args.max_len}")
    if args.threads < 0:
        p.error("--threads must be 0 (the default) or more")
    if args.lr <= 0 or args.clip < 0:
        p.error("--lr must be positive and --clip not negative")
    for name in ("epochs", "hidden", "batch_size", "train_size", "val_size", "time_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv=None) -> dict:
    """Train, plot, time; returns the losses and times (also printed)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        rnngen.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train_data = adding_problem(args.train_size, args.min_len, args.max_len, rng)
    val_data = adding_problem(args.val_size, args.min_len, args.max_len, rng)
    steps_per_epoch = math.ceil(args.train_size / args.batch_size)
    print(f"adding problem: lengths {args.min_len}-{args.max_len}, {args.train_size} training "
          f"and {args.val_size} validation samples, batch {args.batch_size} "
          f"({steps_per_epoch} steps per epoch); MGU with {args.hidden} units "
          f"(rnngen.torch), torch {torch.__version__} on {torch.get_num_threads()} threads")

    model = AddingModel(rnngen_mgu(args.hidden, args.seed), args.hidden)
    t0 = time.perf_counter()
    step_losses, val_losses, epoch_s = train(model, train_data, val_data, args)
    total_s = time.perf_counter() - t0
    print(f"validation MSE {val_losses[0]:.4f} before training, {val_losses[-1]:.4f} after "
          f"{args.epochs} epochs ({total_s:.1f} s); predicting 1.0 gives {BASELINE:.4f}")

    plot(step_losses, val_losses, steps_per_epoch, args.png,
         f"MGU (examples/mgu.yaml), {args.hidden} units, on the adding problem, "
         f"T = {args.min_len}-{args.max_len}")
    print(f"loss curve: {args.png}")

    # The same model with the MGU from rnngen, the MGU as a step loop, and nn.GRU two ways,
    # each from a fresh start and timed on the same batches.
    fresh = AddingModel(rnngen_mgu(args.hidden, args.seed), args.hidden)
    loop = AddingModel(StepLoopMGU(2, args.hidden), args.hidden)
    loop.load_state_dict(fresh.state_dict())          # the same weights, the same names
    models = {
        "rnngen MGU (rnngen.torch)": fresh,
        "MGU as a PyTorch step loop": loop,
        "torch.nn.GRU, packed": AddingModel(PackedGRU(2, args.hidden), args.hidden),
        "torch.nn.GRU, padded": AddingModel(PaddedGRU(2, args.hidden), args.hidden),
    }
    times = time_epochs(models, train_data, args)
    print(f"time per training epoch ({steps_per_epoch} steps; median step of "
          f"{args.time_steps}, the models taking turns):")
    first = next(iter(times.values()))
    for name, s in times.items():
        print(f"  {name:28s} {s:8.2f} s  ({s / first:.1f}x)")
    return dict(initial_loss=val_losses[0], final_loss=val_losses[-1], val_losses=val_losses,
                step_losses=step_losses, epoch_s=epoch_s, total_s=total_s, epoch_times=times,
                png=args.png)


if __name__ == "__main__":
    main(sys.argv[1:])
