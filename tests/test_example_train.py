"""examples/train_adding.py: the MGU of examples/mgu.yaml trained through rnngen.torch on the
adding problem. --quick runs the whole script (train, plot, time the peers) in seconds; the
peers it times compute what they claim to."""
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location(
        "train_adding", ROOT / "examples" / "train_adding.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_learns_and_plots(example, tmp_path, capsys):
    png = tmp_path / "curve" / "loss.png"
    with torch.random.fork_rng():          # the script seeds torch's global generator
        out = example.main(["--quick", "--no-progress", "--png", str(png), "--seed", "1"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["png"] == png
    # an untrained readout predicts about 0 for targets of mean 1 (MSE about 1); three short
    # epochs of sequences of 10-20 steps go well below the variance line 1/6 (0.001-0.003
    # for seeds 0-2)
    assert out["initial_loss"] > 0.5
    assert out["final_loss"] < 0.5 * out["initial_loss"]
    assert out["final_loss"] < 0.1          # below the variance line: it learnt the task
    assert len(out["val_losses"]) == 4 and len(out["epoch_s"]) == 3
    assert set(out["epoch_times"]) >= {"rnngen MGU (rnngen.torch)", "MGU as a PyTorch step loop",
                                       "torch.nn.GRU, packed"}
    assert all(t > 0 for t in out["epoch_times"].values())
    text = capsys.readouterr().out
    assert "time per training epoch" in text and str(png) in text


def test_adding_problem(example):
    import numpy as np
    x, mask, y = example.adding_problem(200, 5, 9, np.random.default_rng(0))
    assert x.shape == (200, 9, 2) and mask.shape == (200, 9) and y.shape == (200,)
    lengths = mask.sum(1)
    assert int(lengths.min()) >= 5 and int(lengths.max()) <= 9
    assert bool((mask[:, :-1] | ~mask[:, 1:]).all())              # padding at the end only
    assert bool((x[..., 1].sum(1) == 2).all())                     # exactly two markers
    assert bool((x[~mask] == 0).all())
    half = lengths // 2
    steps = torch.arange(9)
    marks = x[..., 1] == 1
    assert bool((marks & (steps < half[:, None])).sum(1).eq(1).all())   # one in each half
    assert torch.allclose(y, (x[..., 0] * x[..., 1]).sum(1))


def test_step_loop_is_the_same_mgu(example):
    """StepLoopMGU with rnngen's weights gives rnngen's output and gradients, masked."""
    rnn = example.rnngen_mgu(6, seed=3).double()
    loop = example.StepLoopMGU(2, 6).double()
    loop.load_state_dict(rnn.state_dict())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 7, 2, generator=g, dtype=torch.float64)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 3, 5, 1])[:, None]
    a, b = rnn(x, mask), loop(x, mask)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    a.sum().backward()
    b.sum().backward()
    for name, p in rnn.named_parameters():
        torch.testing.assert_close(p.grad, getattr(loop, name).grad, rtol=1e-10, atol=1e-12)


def test_gru_peers_read_the_last_real_step(example):
    packed, padded = example.PackedGRU(2, 5), example.PaddedGRU(2, 5)
    padded.load_state_dict(packed.state_dict())
    x = torch.rand(3, 6, 2)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    with torch.no_grad():
        want = torch.stack([packed.gru(x[i:i + 1, :n])[1][0, 0]
                            for i, n in enumerate([6, 2, 4])])
        torch.testing.assert_close(packed(x, mask), want)
        torch.testing.assert_close(padded(x, mask), want)
