"""Readers of local dataset files (issue #12 point 2): IDX (MNIST / Fashion-MNIST) and CIFAR-10 binary
batches, on small files written here (raw and gzipped, and broken ones), and on the real MNIST /
Fashion-MNIST in ../shared/data (skipped with a reason without it): shapes, value ranges, and MNIST's first
100 test images equal to ERAN's CSV copy of them."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from fastcert.io import load_cifar10, load_idx_dataset, read_idx
from shared_data import require_shared


def _idx_bytes(a: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return head + a.astype(a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype).tobytes()


def _write_mnist(folder, N: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (N, 28, 28), dtype=np.uint8)
    labs = rng.integers(0, 10, N, dtype=np.uint8)
    for split in ("train", "t10k"):
        for stem, arr, nd in ((f"{split}-images-idx3-ubyte", imgs, 0x08), (f"{split}-labels-idx1-ubyte", labs, 0x08)):
            data = _idx_bytes(arr, nd)
            if gz:
                with gzip.open(folder / (stem + ".gz"), "wb") as fh:
                    fh.write(data)
            else:
                (folder / stem).write_bytes(data)
    return imgs, labs


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz: bool) -> None:
    imgs, labs = _write_mnist(tmp_path, 7, gz)
    for split in ("train", "test"):
        X, y = load_idx_dataset(tmp_path, split, torch.float64)
        assert X.shape == (7, 1, 28, 28) and X.dtype == torch.float64 and y.dtype == torch.int64
        assert torch.equal(X[:, 0] * 255, torch.from_numpy(imgs.astype(np.float64)))
        assert torch.equal(y, torch.from_numpy(labs.astype(np.int64)))
    a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    (tmp_path / "f.idx").write_bytes(_idx_bytes(a, 0x0D))
    assert np.array_equal(read_idx(tmp_path / "f.idx"), a)


def test_idx_errors_name_the_file(tmp_path) -> None:
    imgs = np.zeros((2, 28, 28), dtype=np.uint8)
    (tmp_path / "bad").write_bytes(_idx_bytes(imgs, 0x08)[:-5])
    with pytest.raises(ValueError, match="bad: the header says"):
        read_idx(tmp_path / "bad")
    (tmp_path / "magic").write_bytes(b"\x01\x02\x08\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "magic")
    (tmp_path / "code").write_bytes(b"\x00\x00\x07\x01" + (1).to_bytes(4, "big") + b"\x00")
    with pytest.raises(ValueError, match="type code 0x07"):
        read_idx(tmp_path / "code")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_idx_dataset(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_idx_dataset(tmp_path, "val")


def test_cifar_binary_batches(tmp_path) -> None:
    rng = np.random.default_rng(1)
    recs = []
    for i in (1, 2):
        r = rng.integers(0, 256, (3, 3073), dtype=np.uint8)
        r[:, 0] = rng.integers(0, 10, 3)
        (tmp_path / f"data_batch_{i}.bin").write_bytes(r.tobytes())
        recs.append(r)
    t = rng.integers(0, 256, (2, 3073), dtype=np.uint8)
    t[:, 0] = [3, 9]
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    (sub / "test_batch.bin").write_bytes(t.tobytes())
    X, y = load_cifar10(tmp_path, "train", torch.float64)
    allr = np.concatenate(recs)
    assert X.shape == (6, 3, 32, 32) and torch.equal(y, torch.from_numpy(allr[:, 0].astype(np.int64)))
    # channel-major planes: red 1024, green 1024, blue 1024, each row-major
    assert float(X[4, 1, 2, 5]) * 255 == float(allr[4, 1 + 1024 + 2 * 32 + 5])
    Xt, yt = load_cifar10(sub, "test")  # the subfolder itself works too (here: the only test batch)
    assert Xt.shape == (2, 3, 32, 32) and yt.tolist() == [3, 9] and Xt.dtype == torch.float32
    (sub / "test_batch.bin").write_bytes(t.tobytes()[:-1])
    with pytest.raises(ValueError, match="whole number"):
        load_cifar10(tmp_path, "test")
    bad = t.copy()
    bad[0, 0] = 12
    (sub / "test_batch.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="above 9"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_cifar10(tmp_path / "nothing", "train")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_files(name: str) -> None:
    folder = require_shared(name)
    Xt, yt = load_idx_dataset(folder, "test")
    assert Xt.shape == (10000, 1, 28, 28) and yt.shape == (10000,)
    assert float(Xt.min()) == 0.0 and float(Xt.max()) == 1.0
    assert torch.bincount(yt, minlength=10).min() >= 800
    if name == "mnist":
        csv = np.loadtxt(require_shared("eran/mnist_test.csv"), delimiter=",", dtype=np.int64)
        assert torch.equal(yt[:100], torch.from_numpy(csv[:, 0]))
        assert torch.equal((Xt[:100].double() * 255).round().reshape(100, -1).long(), torch.from_numpy(csv[:, 1:]))
