"""The CIFAR-100 reader on files written exactly as ``../shared/data/make_cifar100.py`` writes the official
``cifar-100-python/`` (Python 2 pickles whose keys and strings are Python 2 ``str``; fine and coarse labels;
``meta`` with the class names). The script's own pickler is used where shared/ is beside the clone; a copy of
its few lines otherwise, so the test runs on a bare clone too."""

import importlib.util
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from kdprune.data import load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "make_cifar100.py"


class _Py2Pickler(pickle._Pickler):
    """Python 2 ``str`` (BINSTRING) for str and bytes, as the originals and the shared script write them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        n = len(raw)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2str
    dispatch[bytes] = _save_py2str


def _writer():
    if SHARED.is_file():
        spec = importlib.util.spec_from_file_location("make_cifar100", SHARED)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod._Py2Pickler, mod.FINE_TO_COARSE
    return _Py2Pickler, [i % 20 for i in range(100)]


@pytest.mark.parametrize("source", ["shared script" if SHARED.is_file() else "copy"])
def test_cifar100_reader_on_the_shared_scripts_format(tmp_path, source):
    pickler, fine_to_coarse = _writer()
    rng = np.random.default_rng(0)
    fine = [f"class_{i:02d}" for i in range(100)]
    out = tmp_path / "cifar-100-python"
    out.mkdir()

    def dump(name, obj):
        with open(out / name, "wb") as f:
            pickler(f, protocol=2).dump(obj)

    def batch(label, n):
        ids = [int(i) for i in rng.integers(0, 100, n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        return {"filenames": [f"img_{i}.png" for i in range(n)], "batch_label": label, "fine_labels": ids,
                "coarse_labels": [fine_to_coarse[i] for i in ids], "data": data}, ids, data

    train, train_ids, train_data = batch("training batch 1 of 1", 40)
    test, test_ids, _ = batch("testing batch 1 of 1", 12)
    dump("train", train)
    dump("test", test)
    dump("meta", {"fine_label_names": fine, "coarse_label_names": [f"super_{i}" for i in range(20)]})
    ds = load_dataset("cifar100", str(tmp_path))  # the parent folder, as the shared script's DEST
    assert ds.num_classes == 100 and ds.train_y.tolist() == train_ids and ds.test_y.tolist() == test_ids
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.train_x.dtype.is_floating_point is False
    # rows are R plane, G plane, B plane of 32x32: image 3, green channel, row 5, column 7
    assert int(ds.train_x[3, 1, 5, 7]) == int(train_data[3, 1024 + 5 * 32 + 7])
    assert ds.classes == fine  # fine labels and their names, not the 20 coarse superclasses
    assert os.path.basename(str(out)) == "cifar-100-python"
