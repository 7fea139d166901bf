"""``python -m fastffnn train``: trains on real data, writes a checkpoint the stock FFNN loads, and fails cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastffnn.train import cli
from fastffnn.reference import LectureFFNN

ROOT = Path(__file__).resolve().parent.parent


def test_default_run_learns_digits_and_saves_a_stock_checkpoint(tmp_path, capsys):
    pytest.importorskip("sklearn")
    rc = cli.main(["--epochs", "3", "--hidden", "32", "--out", str(tmp_path), "--no-progress", "--compare"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "sklearn digits: 1797 examples, 64 features, 10 classes" in out
    assert out.count("dev accuracy") >= 6  # an epoch line per model and epoch
    meta = json.loads((tmp_path / "fastffnn.json").read_text())
    assert meta["dev_accuracy"] > 0.85  # 3 epochs of the lecture's loop on digits
    stock = LectureFFNN(64, 32, 10)
    stock.load_state_dict(torch.load(tmp_path / "fastffnn.pt"))  # the stock FFNN loads the checkpoint as it is
    from sklearn.datasets import load_digits

    d = load_digits()
    acc = (stock(torch.from_numpy(d.data).float()).argmax(-1).numpy() == d.target).mean()
    assert acc > 0.85
    assert "stock" in out and "faster than stock PyTorch" in out
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_user_npz_and_csv_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    y = (X[:, 0] > 0).astype(int) + 2 * (X[:, 1] > 0)
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert cli.main(["--data", str(tmp_path / "d.npz"), "--epochs", "2", "--batch-size", "8", "--out",
                     str(tmp_path / "a"), "--no-progress"]) == 0
    rows = ["f1,f2,f3,f4,f5,label"] + [",".join(map(str, [*x, c])) for x, c in zip(X, y)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    assert cli.main(["--data", str(tmp_path / "d.csv"), "--epochs", "1", "--out", str(tmp_path / "b"),
                     "--no-progress"]) == 0
    assert "60 examples, 5 features, 4 classes" in capsys.readouterr().out


BAD = {
    "missing.csv": (None, "no such file"),
    "ragged.csv": ("1,2,0\n3,4,1\n5,1\n", "ragged rows: row 3 has 2 columns"),
    "text.csv": ("1,2,0\n3,abc,1\n", "row 2: 'abc' is not a number"),
    "fraction.csv": ("1,2,0\n3,4,1.5\n", "labels must be integers"),
    "negative.csv": ("1,2,0\n3,4,-1\n", "labels must be class indices >= 0"),
    "oneclass.csv": ("1,2,1\n3,4,1\n5,6,1\n", "at least 2 classes"),
    "huge-label.csv": ("1,2,0\n3,4,1e12\n", "label 1e+12 would make"),
    "empty.csv": ("", "the file is empty"),
    "data.txt": ("1,2,0\n", "unknown format .txt"),
}


def _in_process(argv, capsys, monkeypatch, env=None):
    """`python -m fastffnn *argv` in this process (a subprocess costs seconds of torch import each): its exit
    code, stdout and stderr. An exception escaping main fails the test, as a traceback would."""
    from types import SimpleNamespace

    from fastffnn.__main__ import main

    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    err = out.err
    if isinstance(code, str):  # as the interpreter does with SystemExit("message")
        err, code = err + code + "\n", 1
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=err)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_data_gives_one_line_error(tmp_path, name, capsys, monkeypatch):
    content, message = BAD[name]
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    argv = ["train", "--data", str(path), "--epochs", "1", "--out", str(tmp_path / "o"), "--no-progress"]
    if name == "data.txt":  # one of them in a process of its own, exactly as a user runs it
        proc = subprocess.run([sys.executable, "-m", "fastffnn", *argv], capture_output=True, text=True, cwd=ROOT)
    else:
        proc = _in_process(argv, capsys, monkeypatch)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastffnn train: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_npz_arrays(tmp_path):
    np.savez(tmp_path / "wrong.npz", a=np.zeros((3, 2)), b=np.zeros(3))
    np.savez(tmp_path / "short.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    from fastffnn.train import data

    with pytest.raises(data.DataError, match="expected arrays 'X' and 'y'"):
        data.load(str(tmp_path / "wrong.npz"))
    with pytest.raises(data.DataError, match="one per example: 3 examples"):
        data.load(str(tmp_path / "short.npz"))




@pytest.mark.parametrize("argv,message", [
    (["train", "--seed", "-1"], "--seed must be >= 0"),
    (["train", "--lr", "inf"], "--lr must be a positive finite number"),
    (["train", "--lr", "nan"], "--lr must be a positive finite number"),
    (["train", "--dev-fraction", "1.5"], "--dev-fraction must be between 0 and 1"),
    (["bench", "--threads", "-1"], "--threads must be at least 1"),
    (["bench", "--shapes", ""], "--shapes '' names nothing"),
    (["bench", "--shapes", ","], "--shapes ',' names nothing"),
    (["bench", "--batches", ","], "--batches ',' names nothing"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_command_lines_give_an_error_not_a_traceback(argv, message, capsys, monkeypatch):
    proc = _in_process(argv, capsys, monkeypatch)
    assert proc.returncode != 0
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_label_column_out_of_range_is_named(tmp_path, capsys, monkeypatch):
    (tmp_path / "d.csv").write_text("1,2,0\n3,4,1\n5,6,0\n7,8,1\n")
    proc = _in_process(["train", "--data", str(tmp_path / "d.csv"), "--label-column", "5", "--out",
                        str(tmp_path / "o")], capsys, monkeypatch)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--label-column 5 is out of range: the rows have 3 columns" in proc.stderr


def test_an_unwritable_out_fails_before_any_training(tmp_path, capsys, monkeypatch):
    (tmp_path / "a-file").write_text("")
    proc = _in_process(["train", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "a-file" / "run")],
                       capsys, monkeypatch)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot be written" in proc.stderr
    assert "epoch" not in proc.stdout.lower()  # it stopped before the first epoch


def test_info_with_a_bad_backend_is_one_error(capsys, monkeypatch):
    proc = _in_process(["info"], capsys, monkeypatch, env={"FASTFFNN_BACKEND": "garbage"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "FASTFFNN_BACKEND must be auto, cpu, cuda or emulated, got 'garbage'" in proc.stderr


def test_several_hidden_widths_train_a_fastmlp_whose_checkpoint_the_sequential_loads(tmp_path, capsys):
    pytest.importorskip("sklearn")
    rc = cli.main(["--epochs", "2", "--hidden", "32,16", "--batch-size", "4", "--out", str(tmp_path),
                   "--no-progress", "--compare"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "MLP(64, 32, 16, 10)" in out and "stock" in out
    meta = json.loads((tmp_path / "fastffnn.json").read_text())
    assert meta["hidden_size"] == [32, 16] and meta["dev_accuracy"] > 0.8
    from torch import nn

    stock = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10),
                          nn.Softmax(dim=-1))
    stock.load_state_dict(torch.load(tmp_path / "fastffnn.pt"))
    from sklearn.datasets import load_digits

    d = load_digits()
    assert (stock(torch.from_numpy(d.data).float()).argmax(-1).numpy() == d.target).mean() > 0.8


@pytest.mark.parametrize("hidden", ["32,", "32,0", "a,b"])
def test_bad_hidden_widths_are_named(hidden):
    with pytest.raises(SystemExit):
        cli.parse_args(["--hidden", hidden])
