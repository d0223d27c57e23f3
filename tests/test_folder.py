"""``--dataset folder`` (your own images), ``dataset.json`` and what exports carry of it, and ``--data-dir``
without ``--dataset`` (the dataset is told from the folder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_RUN, write_cifar10
from kdprune.data import load_dataset
from kdprune.errors import UserError


def write_folder(root: Path, classes=("cat", "dog", "frog"), train: int = 4, test: int = 2, size=(10, 10),
                 mode: str = "RGB", fmt: str = "PNG", test_split: str = "test", seed: int = 0) -> Path:
    """``root/train/<class>/i.<fmt>`` and ``root/<test_split>/<class>/i.<fmt>`` of random images."""
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    w, h = size
    for split, n in (("train", train), (test_split, test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (h, w) if mode == "L" else (h, w, 3)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(d / f"{i}.{ext}", fmt)
    return root


def _train(run_cli, data: Path, out: Path, *extra):
    return run_cli("train", "--dataset", "folder", "--data-dir", data, "--out", out, "--epochs", "1",
                   "--batch-size", "16", "--device", "cpu", *extra)


# ------------------------------------------------------------------------------------------- reading

def test_png_rgb_folder_is_read_exactly_with_sorted_class_names(tmp_path):
    root = write_folder(tmp_path / "d", classes=("zebra", "ant", "cat"), train=3, test=2)
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"\0junk")  # hidden files and folders are ignored
    (root / "train" / "cat" / ".thumbs").mkdir()
    (root / "train" / "cat" / ".thumbs" / "x.png").write_bytes(b"junk")
    (root / "test" / ".hidden-class").mkdir()
    ds = load_dataset("folder", str(root))
    assert ds.name == "folder" and ds.classes == ["ant", "cat", "zebra"] and ds.num_classes == 3
    assert ds.train_x.shape == (9, 3, 10, 10) and ds.test_x.shape == (6, 3, 10, 10)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.pad == 1 and ds.flip  # max(1, round(10 / 8))
    with Image.open(root / "train" / "cat" / "1.png") as im:
        want = np.array(im).transpose(2, 0, 1).copy()
    assert torch.equal(ds.train_x[4], torch.from_numpy(want))  # PNG: lossless, in the file's order
    d = ds.describe()
    assert d["classes"] == ["ant", "cat", "zebra"] and d["in_channels"] == 3 and d["image_size"] == 10
    assert d["mean"] == pytest.approx((ds.train_x.double() / 255).mean(dim=(0, 2, 3)).tolist())
    assert ds.resized(5).classes == ds.classes


def test_grayscale_folder_has_one_channel_and_a_mixed_one_three(tmp_path):
    gray = write_folder(tmp_path / "gray", mode="L", fmt="JPEG", size=(16, 16))
    ds = load_dataset("folder", str(gray))
    assert ds.in_channels == 1 and ds.train_x.shape == (12, 1, 16, 16) and ds.pad == 2
    mixed = write_folder(tmp_path / "mixed", mode="L", fmt="JPEG", size=(16, 16))
    Image.fromarray(np.full((16, 16, 3), (200, 10, 90), dtype=np.uint8)).save(mixed / "train" / "dog" / "rgb.jpg")
    ds = load_dataset("folder", str(mixed))
    assert ds.in_channels == 3 and ds.train_x.shape == (13, 3, 16, 16)
    g = ds.train_x[0]  # a grayscale image among RGB ones: its value in every channel
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    assert torch.equal(ds.train_x[0, 0], load_dataset("folder", str(gray)).train_x[0, 0])


def test_image_size_resizes_while_decoding(tmp_path):
    root = write_folder(tmp_path / "d", size=(12, 12))
    Image.fromarray(np.zeros((6, 20, 3), dtype=np.uint8)).save(root / "train" / "cat" / "wide.png")
    with pytest.raises(UserError, match=r"differ in size: 12x12 \(18 images.*20x6 \(1 image, e\.g\. .*wide\.png.*"
                                        r"--image-size") as e:
        load_dataset("folder", str(root))
    assert "\n" not in str(e.value)
    ds = load_dataset("folder", str(root), image_size=8)
    assert ds.train_x.shape == (13, 3, 8, 8) and ds.test_x.shape == (6, 3, 8, 8) and ds.pad == 1
    with Image.open(root / "train" / "cat" / "0.png") as im:
        want = np.array(im.convert("RGB").resize((8, 8), Image.Resampling.BOX)).transpose(2, 0, 1).copy()
    assert torch.equal(ds.train_x[0], torch.from_numpy(want))
    assert ds.resized(8) is ds  # make_env's later resize is a no-op
    big = load_dataset("folder", str(root), image_size=16)  # growing: bilinear
    assert big.train_x.shape[-1] == 16 and big.pad == 2


def test_non_square_images_need_image_size(tmp_path):
    root = write_folder(tmp_path / "d", size=(12, 8))
    with pytest.raises(UserError, match="12x8, not square; pass --image-size"):
        load_dataset("folder", str(root))
    assert load_dataset("folder", str(root), image_size=8).image_size == 8


def test_val_is_the_test_split_when_there_is_no_test(tmp_path):
    ds = load_dataset("folder", str(write_folder(tmp_path / "d", test_split="val", test=3)))
    assert ds.test_x.shape[0] == 9 and ds.test_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_cifar_and_digits_class_names(tmp_path):
    folder = write_cifar10(tmp_path / "c")
    assert load_dataset("cifar10", str(folder)).classes == [f"c{i}" for i in range(10)]
    (folder / "batches.meta").unlink()  # the names are optional
    assert load_dataset("cifar10", str(folder)).classes is None
    assert load_dataset("digits").classes == [str(i) for i in range(10)]


# ---------------------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("breakage, message", [
    ("missing-class", r"test has no folder for the class frog \(found in .*train\)"),
    ("two-missing", r"test has no folder for the classes dog, frog"),
    ("unknown-class", r"test holds the class bird that .*train does not have"),
    ("undecodable", r"cannot decode image .*broken\.png"),
    ("empty-class", r"no images in the class folder .*train.dog"),
    ("one-class", r"train holds 1 class folder; a classifier needs at least 2"),
    ("no-train", r"no .*train folder: --dataset folder expects DIR/train/<class>/\*"),
    ("no-test", r"no .*test or .*val folder"),
    ("no-dir", r"--data-dir .*nowhere does not exist"),
])
def test_folder_mistakes_are_one_line_errors(tmp_path, run_cli, breakage, message):
    import shutil

    root = write_folder(tmp_path / "d")
    if breakage == "missing-class":
        shutil.rmtree(root / "test" / "frog")
    elif breakage == "two-missing":
        shutil.rmtree(root / "test" / "frog")
        shutil.rmtree(root / "test" / "dog")
    elif breakage == "unknown-class":
        shutil.copytree(root / "test" / "cat", root / "test" / "bird")
    elif breakage == "undecodable":
        (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif breakage == "empty-class":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif breakage == "one-class":
        for split in ("train", "test"):
            shutil.rmtree(root / split / "dog")
            shutil.rmtree(root / split / "frog")
    elif breakage == "no-train":
        shutil.rmtree(root / "train")
    elif breakage == "no-test":
        shutil.rmtree(root / "test")
    elif breakage == "no-dir":
        root = tmp_path / "nowhere"
    code, out, err = _train(run_cli, root, tmp_path / "out")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdprune: error: "), err
    import re

    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_folder_refuses_download(tmp_path, run_cli):
    code, _, err = _train(run_cli, write_folder(tmp_path / "d"), tmp_path / "out", "--download")
    assert code == 2 and "drop --download" in err


# ------------------------------------------------------------------------- dataset.json and exports

@pytest.mark.slow
def test_dataset_json_reaches_onnx_sparse_and_inspect(tmp_path, run_cli):
    import onnx

    from kdprune.deploy.sparse_format import read_metadata

    data = write_folder(tmp_path / "d", classes=("b", "a", "c"), mode="L", size=(8, 8))
    out = tmp_path / "out"
    code, _, err = _train(run_cli, data, out)
    assert code == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    ds = load_dataset("folder", str(data))
    mean, std = ds.channel_stats()
    assert meta == {"dataset": "folder", "num_classes": 3, "in_channels": 1, "image_size": 8,
                    "mean": pytest.approx(mean), "std": pytest.approx(std), "classes": ["a", "b", "c"]}

    code, _, err = run_cli("export", out, "--format", "onnx")  # the size comes from dataset.json
    assert code == 0, err
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["classes"]) == ["a", "b", "c"]
    assert json.loads(props["mean"]) == pytest.approx(mean) and json.loads(props["std"]) == pytest.approx(std)

    code, _, err = run_cli("export", out, "--format", "sparse")
    assert code == 0, err
    stored = read_metadata(out / "model.sparse.safetensors")
    assert json.loads(stored["classes"]) == ["a", "b", "c"] and stored["format"] and stored["arch"] == "resnet20"

    code, text, err = run_cli("inspect", out, "--json")
    assert code == 0, err
    r = json.loads(text)
    assert r["num_classes"] == 3 and r["classes"] == ["a", "b", "c"] and r["mean"] == pytest.approx(mean)
    code, text, _ = run_cli("inspect", out)
    assert "classes: 3 (a, b, c)" in text
    # a copied export, away from its run folder, still says what it classifies
    lone = tmp_path / "lone" / "m.safetensors"
    lone.parent.mkdir()
    lone.write_bytes((out / "model.sparse.safetensors").read_bytes())
    code, text, err = run_cli("inspect", lone, "--json")
    assert code == 0 and json.loads(text)["classes"] == ["a", "b", "c"], err


@pytest.mark.parametrize("below", ["sparsity-0.9/kd", "imp/kd/round-05-0.9", "2x/unstructured/kd"])
def test_a_result_folder_finds_its_runs_dataset_json(tmp_path, below):
    """IMP rounds and a channel run's twin sit three folders below the run's dataset.json."""
    from kdprune.deploy.exporting import inspect
    from kdprune.io import save_tensors, write_json
    from kdprune.models import create_model

    write_json(tmp_path / "dataset.json", {"classes": ["a", "b", "c"], "mean": [0.5] * 3, "std": [0.25] * 3})
    save_tensors(tmp_path / below / "model.safetensors", create_model("resnet20", 3, 3).state_dict())
    assert inspect(tmp_path / below, "resnet20", 32)["classes"] == ["a", "b", "c"]


def test_inspect_without_dataset_json_is_unchanged(tmp_path):
    from kdprune.deploy.exporting import inspect
    from kdprune.io import save_tensors
    from kdprune.models import create_model

    save_tensors(tmp_path / "model.safetensors", create_model("resnet20", 10, 3).state_dict())
    r = inspect(tmp_path, "resnet20", 32)
    assert not {"classes", "mean", "std", "num_classes"} & set(r)


@pytest.mark.slow
def test_run_on_a_folder_end_to_end(tmp_path, run_cli):
    data = write_folder(tmp_path / "d", train=10, test=4, size=(12, 12), fmt="JPEG")
    out = tmp_path / "run"
    code, stdout, err = run_cli("run", "--dataset", "folder", "--data-dir", data, "--image-size", "8", *TINY_RUN,
                                "--sparsity", "0.5", "--retrain", "plain", "--device", "cpu", "--out", out)
    assert code == 0, err
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["image_size"] == 8 and meta["classes"] == ["cat", "dog", "frog"] and meta["in_channels"] == 3
    assert (out / "sparsity-0.5" / "plain" / "metrics.json").is_file()
    code, text, err = run_cli("inspect", out / "sparsity-0.5" / "plain", "--json")  # dataset.json two levels up
    assert code == 0 and json.loads(text)["classes"] == ["cat", "dog", "frog"], err
    code, _, err = run_cli("report", out, "--out", tmp_path / "rep")
    assert code == 0, err
    assert "- folder: 3 classes: cat, dog, frog" in (tmp_path / "rep" / "results.md").read_text()


# --------------------------------------------------------------------------- --data-dir without --dataset

def test_data_dir_alone_tells_the_dataset(tmp_path, capsys, cifar10_dir):
    from kdprune.experiments.config import RunConfig, build_config

    for given in (cifar10_dir, cifar10_dir.parent):
        cfg = build_config(RunConfig, {"data_dir": str(given)})
        assert cfg.dataset == "cifar10"
        assert f"kdprune: --data-dir {given} holds cifar10: using --dataset cifar10" in capsys.readouterr().err
    folder = write_folder(tmp_path / "mine")
    assert build_config(RunConfig, {"data_dir": str(folder)}).dataset == "folder"
    assert "holds folder: using --dataset folder" in capsys.readouterr().err
    cfg = build_config(RunConfig, {})
    assert cfg.dataset == "digits" and capsys.readouterr().err == ""  # unchanged default, unchanged hashes
    assert build_config(RunConfig, {"dataset": "cifar10", "data_dir": str(cifar10_dir)}).dataset == "cifar10"
    assert capsys.readouterr().err == ""  # said only when it was guessed


def test_data_dir_mistakes(tmp_path, run_cli, cifar10_dir):
    from kdprune.experiments.config import RunConfig, build_config

    code, _, err = run_cli("run", "--data-dir", "/does/not/exist", "--out", tmp_path / "o")
    assert code == 2 and err.strip() == "kdprune: error: --data-dir /does/not/exist does not exist", err
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="cannot tell the dataset: --data-dir .*plain holds no .*; pass --dataset"):
        build_config(RunConfig, {"data_dir": str(tmp_path / "plain")})
    with pytest.raises(UserError, match="digits is embedded and reads no --data-dir"):
        build_config(RunConfig, {"dataset": "digits", "data_dir": str(cifar10_dir)})
    write_cifar10(tmp_path / "both")
    (tmp_path / "both" / "tiny-imagenet-200").mkdir()
    (tmp_path / "both" / "tiny-imagenet-200" / "wnids.txt").write_text("n01443537\n")
    with pytest.raises(UserError, match="holds cifar10 and tinyimagenet; pass --dataset"):
        build_config(RunConfig, {"data_dir": str(tmp_path / "both")})


def test_sweep_resolves_the_dataset_of_its_data_dir(tmp_path, capsys, cifar10_dir):
    import yaml

    from kdprune.experiments.sweep import load_sweep

    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "sw"), "grid": {"seed": [0, 1]},
                                    "base": {"data_dir": str(cifar10_dir), "sparsity": [0.5]}}))
    _, configs = load_sweep(spec)
    assert [c.dataset for c in configs] == ["cifar10", "cifar10"]
    assert capsys.readouterr().err.count("using --dataset cifar10") == 1  # said once, not per grid point
    spec.write_text(yaml.safe_dump({"out": str(tmp_path / "sw2"), "grid": {"seed": [0]}}))
    _, configs = load_sweep(spec)
    assert configs[0].dataset == "digits"
