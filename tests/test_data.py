import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import write_cifar10, write_cifar100, write_tinyimagenet
from kdprune.data import TensorLoader, load_dataset
from kdprune.data.augment import random_crop_flip
from kdprune.errors import UserError


def test_digits_is_real_and_split_fixed():
    ds = load_dataset("digits")
    assert ds.train_x.shape == (1437, 1, 8, 8) and ds.test_x.shape == (360, 1, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and int(ds.train_x.max()) == 255
    assert set(ds.train_y.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(ds.test_x, again.test_x)


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    """kdprune reads scikit-learn's digits file itself (no scikit-learn import per process): the same arrays."""
    from sklearn.datasets import load_digits

    from kdprune.data.datasets import digits_arrays

    images, labels = digits_arrays()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    assert images.shape == (1797, 8, 8) and labels.dtype == np.int64


@pytest.mark.parametrize("as_parent", [True, False])
def test_cifar10_reader_matches_the_pickles(tmp_path, as_parent):
    folder = write_cifar10(tmp_path)
    ds = load_dataset("cifar10", str(tmp_path if as_parent else folder))
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    with open(folder / "data_batch_2", "rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    # image 3 of batch 2 is row 23; first 1024 bytes are the red plane, row-major
    np.testing.assert_array_equal(ds.train_x[23, 0].numpy(), b2[b"data"][3, :1024].reshape(32, 32))
    np.testing.assert_array_equal(ds.train_x[23, 2].numpy(), b2[b"data"][3, 2048:].reshape(32, 32))
    assert ds.train_y[23].item() == b2[b"labels"][3]
    assert ds.num_classes == 10 and ds.pad == 4 and ds.flip


def test_cifar100_reader_uses_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", str(folder))
    with open(folder / "train", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert ds.num_classes == 100 and ds.train_y.tolist() == d[b"fine_labels"]


def test_cifar_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    folder = write_cifar10(tmp_path)
    os.remove(folder / "data_batch_3")
    with pytest.raises(UserError, match="missing CIFAR file"):
        load_dataset("cifar10", str(folder))
    (folder / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="not a CIFAR python batch"):
        load_dataset("cifar10", str(folder))


def test_cifar_reader_refuses_pickled_code(tmp_path):
    folder = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(UserError):
        load_dataset("cifar10", str(folder))
    assert not (tmp_path / "pwned").exists()


def test_tinyimagenet_reader_decodes_and_caches(tmp_path):
    folder = write_tinyimagenet(tmp_path)
    ds = load_dataset("tinyimagenet", str(tmp_path))
    assert ds.train_x.shape == (6, 3, 64, 64) and ds.test_x.shape == (4, 3, 64, 64)
    assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_y.tolist() == [0, 1, 0, 1]
    # the grayscale JPEG became three equal channels
    assert torch.equal(ds.train_x[0, 0], ds.train_x[0, 1]) and torch.equal(ds.train_x[0, 1], ds.train_x[0, 2])
    from PIL import Image

    with Image.open(folder / "val" / "images" / "val_1.JPEG") as im:
        np.testing.assert_array_equal(ds.test_x[1].numpy(), np.asarray(im.convert("RGB")).transpose(2, 0, 1))
    cache = list(folder.glob("kdprune-cache-*.npz"))
    assert len(cache) == 1
    # the cache is used: remove the images and read again
    for p in (folder / "train").rglob("*.JPEG"):
        p.unlink()
    assert torch.equal(load_dataset("tinyimagenet", str(folder)).train_x, ds.train_x)


def test_tinyimagenet_bad_image_size(tmp_path):
    from PIL import Image

    folder = write_tinyimagenet(tmp_path)
    Image.new("RGB", (32, 32)).save(folder / "val" / "images" / "val_0.JPEG")
    with pytest.raises(UserError, match="expected a 64x64 image"):
        load_dataset("tinyimagenet", str(folder))


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("mnist")


def _reference_crop_flip(img, oy, ox, pad, flipped):
    p = F.pad(img, (pad, pad, pad, pad))
    h, w = img.shape[-2:]
    out = p[:, oy:oy + h, ox:ox + w]
    return out.flip(-1) if flipped else out


def test_batched_crop_flip_equals_per_image_reference():
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (16, 3, 6, 6), dtype=torch.uint8, generator=g)
    pad = 2
    out = random_crop_flip(x, pad, True, torch.Generator().manual_seed(5))
    # replay the same draws
    g2 = torch.Generator().manual_seed(5)
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=g2)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=g2)
    fl = torch.rand(16, generator=g2) < 0.5
    assert 0 < int(fl.sum()) < 16
    for i in range(16):
        assert torch.equal(out[i], _reference_crop_flip(x[i], int(oy[i]), int(ox[i]), pad, bool(fl[i])))


def test_loader_is_deterministic_per_seed_and_epoch_and_shards():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(50) % 10
    kw = dict(mean=[0.5], std=[0.2], train=True, pad=1, flip=False)

    def epoch(seed, e, **extra):
        ld = TensorLoader(x, y, 10, seed=seed, **kw, **extra)
        ld.set_epoch(e)
        return list(ld)

    a, b, c, d = epoch(0, 1), epoch(0, 1), epoch(0, 2), epoch(1, 1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1]) and not torch.equal(a[0][1], d[0][1])
    # normalisation
    ev = TensorLoader(x, y, 64, mean=[0.5], std=[0.2], train=False)
    (xb, yb), = list(ev)
    torch.testing.assert_close(xb, (x.float() / 255 - 0.5) / 0.2)
    # two ranks see disjoint halves of one permutation
    r0 = torch.cat([b_[1] for b_ in epoch(0, 1, rank=0, world_size=2, drop_last=False)])
    r1 = torch.cat([b_[1] for b_ in epoch(0, 1, rank=1, world_size=2, drop_last=False)])
    assert len(r0) == len(r1) == 25
    ids = TensorLoader(x, torch.arange(50), 10, seed=0, rank=0, world_size=2, drop_last=False, **kw)
    ids1 = TensorLoader(x, torch.arange(50), 10, seed=0, rank=1, world_size=2, drop_last=False, **kw)
    s0 = set(torch.cat([b_[1] for b_ in ids]).tolist())
    s1 = set(torch.cat([b_[1] for b_ in ids1]).tolist())
    assert not s0 & s1 and s0 | s1 == set(range(50))


def test_ranks_augment_their_share_of_the_global_batch_as_one_process_does():
    """Under DDP rank r's batch is positions r::W of the global batch: its crops and flips are those one process
    gives those images (each rank once drew its own, so DDP scores differed from one process's)."""
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    y = torch.zeros(64, dtype=torch.long)
    kw = dict(mean=[0.5], std=[0.5], train=True, pad=2, flip=True, seed=5)
    one = list(TensorLoader(x, y, 32, **kw).batches_with_index())
    ranks = [list(TensorLoader(x, y, 16, rank=k, world_size=2, **kw).batches_with_index()) for k in (0, 1)]
    for b, (xb, _, idx) in enumerate(one):
        for k in (0, 1):
            rx, _, ridx = ranks[k][b]
            assert torch.equal(ridx, idx[k::2]) and torch.equal(rx, xb[k::2])
