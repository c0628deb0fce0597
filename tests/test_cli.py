"""``python examples/train.py`` / ``python -m zerokara train``: outputs, exit codes, option errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zerokara.trainer
from conftest import interrupting_stepper
from zerokara import TwoLayerNet
from zerokara.__main__ import main as zerokara_main
from zerokara.cli import main

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("config.json", "history.json", "history.csv", "params.npz", "loss.png", "accuracy.png")


def load_example():
    spec = importlib.util.spec_from_file_location("train_example", ROOT / "examples" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_outputs(out: Path, iterations: int) -> dict:
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    for name in ("loss.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with np.load(out / "params.npz", allow_pickle=False) as f:
        shapes = {k: f[k].shape for k in f.files}
        assert all(np.isfinite(f[k]).all() for k in f.files)
    assert shapes == {"W1": (784, 50), "b1": (50,), "W2": (50, 10), "b2": (10,)}
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == history["iterations"] == iterations
    config = json.loads((out / "config.json").read_text())
    assert config["versions"]["numpy"] == np.__version__
    assert {"backend", "threads", "seed", "train", "model", "dataset"} <= set(config)
    return {"history": history, "config": config}


def test_short_backprop_run_writes_everything(tmp_path, capsys):
    out = tmp_path / "run"
    code = load_example().main(["--grad", "backprop", "--iters", "300", "--out", str(out), "--no-progress",
                                  "--threads", "1"])
    assert code == 0
    files = check_outputs(out, 300)
    history, config = files["history"], files["config"]
    # 300 iterations of 100 out of 60000 complete no epoch: epoch 0, then
    # the end-of-run evaluation.
    assert [e["iteration"] for e in history["epochs"]] == [0]
    assert history["final"]["iteration"] == 300 and history["final"]["epoch"] == 0.5
    assert history["final"]["test_acc"] > 0.5  # 0.10 before training
    assert config["status"] == "completed" and config["seed"] == 0
    assert config["train"]["grad"] == "backprop" and config["dataset"]["x_dtype"] == "float32"
    csv_rows = (out / "history.csv").read_text().splitlines()
    assert len(csv_rows) == 3
    printed = capsys.readouterr().out
    assert "epoch 0 | train acc, test acc | 0.0992, 0.1009" in printed  # seed 0's untrained net


def test_seed_is_one_stream_like_the_books(tmp_path, monkeypatch):
    # --seed s: W1, W2 and then the batches from one RandomState(s), as the
    # book's global np.random after np.random.seed(s).
    seen = {}
    real_train = zerokara.trainer.train

    def spy(net, *args, rng=None, **kw):
        seen["W1"] = net.params["W1"].copy()
        seen["state"] = rng.get_state()[1].copy(), rng.get_state()[2]
        return real_train(net, *args, rng=rng, **kw)

    monkeypatch.setattr(zerokara.trainer, "train", spy)
    assert main(["--grad", "backprop", "--iters", "2", "--seed", "5", "--out", str(tmp_path), "--no-progress"]) == 0
    book = np.random.RandomState(5)
    np.testing.assert_array_equal(seen["W1"], 0.01 * book.randn(784, 50))
    book.randn(50, 10)
    np.testing.assert_array_equal(seen["state"][0], book.get_state()[1])
    assert seen["state"][1] == book.get_state()[2]


def test_random_seed_is_recorded(tmp_path):
    assert main(["--grad", "backprop", "--iters", "1", "--seed", "random", "--out", str(tmp_path), "--no-progress"]) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed_source"] == "random" and 0 <= config["seed"] < 2**32
    assert config["train"]["seed"] == config["seed"]


def test_interrupt_writes_results_and_returns_130(tmp_path, monkeypatch, capsys):
    def ctrl_c():
        raise KeyboardInterrupt

    # the 7th step of the trainer's backprop loop is interrupted
    monkeypatch.setattr(TwoLayerNet, "_sgd_stepper", interrupting_stepper(TwoLayerNet._sgd_stepper, 7, ctrl_c))
    out = tmp_path / "run"
    assert main(["--grad", "backprop", "--iters", "100", "--out", str(out), "--no-progress", "--threads", "1"]) == 130
    files = check_outputs(out, 6)
    assert files["history"]["status"] == "interrupted" and files["config"]["status"] == "interrupted"
    assert files["history"]["final"]["iteration"] == 6
    assert "Interrupted after iteration 6 of 100" in capsys.readouterr().err


def test_divergence_writes_results_and_fails(tmp_path, capsys):
    out = tmp_path / "run"
    # lr 1e308: a2 overflows within a few iterations (lr 1e307 still trains, badly).
    assert main(["--grad", "backprop", "--iters", "50", "--lr", "1e308", "--out", str(out), "--no-progress"]) == 1
    history = json.loads((out / "history.json").read_text())
    check_outputs(out, history["iterations"])  # params.npz: the last evaluated (finite) parameters
    assert history["status"] == "diverged" and history["loss"][-1] is None
    err = capsys.readouterr().err
    assert f"at iteration {history['iterations']} " in err and "try a smaller one" in err


def test_numerical_short_run(tmp_path):
    out = tmp_path / "run"
    try:
        code = main(["--iters", "20", "--out", str(out), "--no-progress", "--threads", "1"])  # --grad numerical is the default
    except AttributeError:
        pytest.skip("the numerical gradient kernels are not available yet")
    assert code == 0
    files = check_outputs(out, 20)
    assert files["config"]["train"]["grad"] == "numerical"
    assert files["config"]["train"]["numgrad_method"] == "incremental"


def test_python_backend_run(tmp_path):
    out = tmp_path / "run"
    assert main(["--grad", "backprop", "--backend", "python", "--iters", "20", "--out", str(out), "--no-progress"]) == 0
    assert check_outputs(out, 20)["config"]["backend"] == "python"


def test_python_m_zerokara_train(tmp_path, capsys):
    out = tmp_path / "run"
    assert zerokara_main(["train", "--grad", "backprop", "--iters", "5", "--out", str(out), "--no-progress"]) == 0
    check_outputs(out, 5)
    with pytest.raises(SystemExit) as exc:
        zerokara_main(["train", "--help"])
    assert exc.value.code == 0
    assert "python -m zerokara train" in capsys.readouterr().out
    assert zerokara_main(["info"]) == 0
    assert "backend:" in capsys.readouterr().out


def test_script_as_a_subprocess(tmp_path):
    # What the user types; the script finds the package from a checkout too.
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train.py"), "--grad", "backprop", "--iters", "3",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train acc, test acc" in proc.stdout
    assert proc.stderr == ""  # stderr is not a terminal: no progress bar
    check_outputs(out, 3)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--iters", "0"], "argument --iters: expected a positive integer; got 0"),
        (["--iters", "ten"], "argument --iters: expected a positive integer; got 'ten'"),
        (["--batch-size", "-5"], "argument --batch-size: expected a positive integer; got -5"),
        (["--hidden-size", "0"], "argument --hidden-size/--hidden: expected a positive integer; got 0"),
        (["--lr", "0"], "argument --lr: expected a positive finite number; got '0'"),
        (["--lr", "-0.1"], "argument --lr: expected a positive finite number; got '-0.1'"),
        (["--lr", "nan"], "argument --lr: expected a positive finite number; got 'nan'"),
        (["--weight-init-std", "0"], "argument --weight-init-std: expected a positive finite number"),
        (["--h", "0"], "argument --h: expected a positive finite number; got '0'"),
        (["--threads", "0"], "argument --threads: expected a positive integer; got 0"),
        (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295 or 'random'; got -1"),
        (["--dataset", "cifar10"], "argument --dataset: invalid choice: 'cifar10'"),
        (["--grad", "exact"], "argument --grad: invalid choice: 'exact'"),
        (["--numgrad-method", "fast"], "argument --numgrad-method: invalid choice: 'fast'"),
        (["--backend", "c"], "argument --backend: invalid choice: 'c'"),
        (["--no-replace", "--batch-size", "60001"],
         "argument --batch-size: 60001 is larger than the 60000 training samples of mnist"),
        (["--data-dir", "{tmp}/nowhere"], "argument --data-dir: {tmp}/nowhere is not a folder"),
        (["--out", "{tmp}/file.txt"], "argument --out: {tmp}/file.txt exists and is not a folder"),
        (["--out", "{tmp}/file.txt/run"], "argument --out: cannot write into {tmp}/file.txt/run"),
        (["--iters", "5", "--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ],
)
def test_option_errors(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out (runs/...) must not appear either
    (tmp_path / "file.txt").write_text("not a folder")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1  # one clear line, no usage block
    assert ": error: " in lines[0] and lines[0].endswith("(see --help)")
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert not (tmp_path / "runs").exists()


def test_full_method_warns_about_its_cost(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("zerokara.cli._run", lambda args, out, prog: 0)
    assert main(["--numgrad-method", "full", "--out", str(tmp_path)]) == 0
    assert "brute force" in capsys.readouterr().err


def test_show_opens_the_figures(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")  # no screen in tests; the real run uses pyplot's default backend
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(len(plt.get_fignums())))
    assert main(["--grad", "backprop", "--iters", "2", "--show", "--out", str(tmp_path), "--no-progress"]) == 0
    assert shown == [2]
    plt.close("all")
