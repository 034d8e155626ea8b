"""data=shards: a memory-mapped .npy shard set trains exactly like data=arrays on the same data, resumes
mid-epoch at the exact batch, reads only the rows a batch needs, and a missing or truncated shard is a
one-line error naming the file."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dualml.config import load_config
from dualml.data import ShardSet, write_shard_chunks, write_shards
from dualml.errors import ConfigError
from dualml.testing import selected_backends
from dualml.train.data import load_dataset
from dualml.train.trainer import Trainer


@pytest.fixture(scope="module")
def digits_sets(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)
    root = tmp_path_factory.mktemp("sets")
    np.savez(root / "digits.npz", x=x, y=y)
    write_shards(x, y, root / "digits", shard_size=500)  # 4 shards, the last one partial
    return root, x, y


def test_writer_and_index(digits_sets, tmp_path):
    root, x, y = digits_sets
    index = json.loads((root / "digits" / "index.json").read_text())
    assert [s["rows"] for s in index["shards"]] == [500, 500, 500, 297] and index["rows"] == len(y)
    s = ShardSet(root / "digits")
    idx = np.array([1796, 0, 499, 500, 1000, 3])
    np.testing.assert_array_equal(s.rows(idx), x[idx])
    np.testing.assert_array_equal(s.y, y)
    # a stream of chunks that do not line up with the shards gives the same files
    write_shard_chunks(((x[i:i + 333], y[i:i + 333]) for i in range(0, len(y), 333)), tmp_path / "c", 500)
    for f in ("x-00001.npy", "y-00003.npy"):
        assert (tmp_path / "c" / f).read_bytes() == (root / "digits" / f).read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        write_shards(x, y, tmp_path / "c", 10)


def test_splits_equal_arrays(digits_sets):
    root, _, _ = digits_sets
    a = load_dataset({"name": "arrays", "path": str(root / "digits.npz")}, input_shape=(1, 8, 8))
    s = load_dataset({"name": "shards", "path": str(root / "digits")}, input_shape=(1, 8, 8))
    for split in ("train", "val", "test"):
        sa, ss = getattr(a, split), getattr(s, split)
        np.testing.assert_array_equal(sa.y, ss.y)
        assert ss.x.shape == sa.x.shape and ss.x.dtype == sa.x.dtype
        np.testing.assert_array_equal(ss.x[np.arange(len(ss))], sa.x)
        np.testing.assert_array_equal(ss.x[5:9], sa.x[5:9])


def _cfg(backend, data, *more):
    return load_config([f"backend={backend}", "model=cnn", *data, "model.num_classes=10", "trainer.max_steps=12",
                        "trainer.schedule.name=constant", "data.batch_size=32", *more])


@pytest.mark.parametrize("backend", selected_backends())
def test_same_curve_as_arrays_and_exact_mid_epoch_resume(digits_sets, backend, tmp_path):
    root, _, _ = digits_sets
    arrays = ["data=arrays", f"data.path={root / 'digits.npz'}"]
    shards = ["data=shards", f"data.path={root / 'digits'}"]
    ref = Trainer(_cfg(backend, arrays), write=False, progress=False)
    ref.fit()
    sh = Trainer(_cfg(backend, shards), write=False, progress=False)
    sh.fit()
    # the same rows in the same order, the same float32 values: the same computation, bit for bit
    assert [r["loss"] for r in sh.history.steps] == [r["loss"] for r in ref.history.steps]
    # stop at step 5 of an epoch of 39 batches, then resume: steps 6..12 are the uninterrupted run's
    run = tmp_path / "run"
    part = Trainer(_cfg(backend, shards, "trainer.max_steps=5", "trainer.checkpoint_every=5",
                        f"trainer.run_dir={run}"), progress=False)
    part.fit()
    rest = Trainer(_cfg(backend, shards, "trainer.resume=true", f"trainer.run_dir={run}"), progress=False)
    rest.fit()
    assert rest.resumed_from["step"] == 5
    assert [r["loss"] for r in rest.history.steps[5:]] == [r["loss"] for r in sh.history.steps[5:]]


def test_rank_reads_only_its_part(digits_sets, monkeypatch):
    from dualml.train.data import Loader

    root, _, _ = digits_sets
    s = load_dataset({"name": "shards", "path": str(root / "digits")})
    seen = []
    real = ShardSet.rows
    monkeypatch.setattr(ShardSet, "rows", lambda self, idx: seen.append(np.asarray(idx).copy()) or real(self, idx))
    loader = Loader(s.train, 64, seed=3, rank=1, world_size=2, drop_last=True)
    batches = list(loader)
    read = np.concatenate(seen)
    assert len(read) == sum(len(b[1]) for b in batches) == 32 * len(loader)
    globals_ = np.concatenate([g[1::2] for g in loader.global_batches()])
    np.testing.assert_array_equal(read, s.train.x.index[globals_])


def test_missing_and_truncated_shards_are_one_line(digits_sets, tmp_path):
    root, x, y = digits_sets
    write_shards(x, y, tmp_path / "s", 600)
    os.truncate(tmp_path / "s" / "x-00001.npy", 1000)
    (tmp_path / "s" / "y-00002.npy").unlink()
    with pytest.raises(ConfigError, match=r"shard .*x-00001.npy is truncated or changed: 1000 bytes"):
        ShardSet(tmp_path / "s")
    for args, needle in [([f"data.path={tmp_path / 's'}"], "x-00001.npy is truncated"),
                         ([f"data.path={tmp_path / 'nothing'}"], "index.json does not exist")]:
        out = subprocess.run([sys.executable, "-m", "dualml", "train", "data=shards", *args, "trainer.max_steps=1",
                              f"trainer.run_dir={tmp_path / 'r'}"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and needle in out.stderr, out.stderr
    os.truncate(tmp_path / "s" / "x-00001.npy", (tmp_path / "s" / "x-00000.npy").stat().st_size)
    with pytest.raises(ConfigError, match=r"shard .*y-00002.npy is missing"):
        ShardSet(tmp_path / "s")


def test_pread_and_mmap_read_the_same_rows(digits_sets):
    root, x, _ = digits_sets
    idx = np.random.default_rng(0).integers(0, len(x), 300)
    a, b = ShardSet(root / "digits"), ShardSet(root / "digits", read="mmap")
    assert a._fds and not b._fds
    b.RELEASE_EVERY = 1  # release after every read: the rows are still right
    np.testing.assert_array_equal(a.rows(idx), x[idx])
    np.testing.assert_array_equal(b.rows(idx), x[idx])
    np.testing.assert_array_equal(b.rows(idx[::-1]), x[idx[::-1]])


def test_estimate_counts_what_shards_hold(digits_sets):
    """A memory estimate counts the row numbers and labels a shard split holds, not the samples on disk."""
    from dualml.evidence.estimate import dataset_bytes

    root, x, y = digits_sets
    s = load_dataset({"name": "shards", "path": str(root / "digits")})
    a = load_dataset({"name": "arrays", "path": str(root / "digits.npz")})
    assert dataset_bytes(s) == 2 * y.nbytes  # int64 row numbers + int64 labels, one of each per sample
    assert dataset_bytes(a) == x.nbytes + y.nbytes
