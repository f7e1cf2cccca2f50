"""Inputs that crashed or were silently misread (issue 25): config files with a repeated key, a
Latin-1 byte, non-finite numbers or a negative seed; 16-bit grey images; decompression bombs;
NUL / Latin-1 bytes in list files and non-UTF-8 file names; output names longer than the file
system takes; size options that ran into the out-of-memory killer. Each is one line, before any
work, and leaves nothing behind."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cache_helpers import make_cache
from reid_masks.cli import main as masks_main
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.fileio import check_writable
from reid_masks.imageio import read_image
from reid_train.cli import main as train_main
from reid_train.config import load_config

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


def masks(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(masks_main, [str(a) for a in args])
    return res.exit_code, res.output


def one_error_line(out: str) -> str:
    """The output's only line, which must be an 'error: ...' line."""
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A real PNG of a few hundred bytes that declares side x side pixels (10**10, over PIL's 2 x MAX_IMAGE_PIXELS)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    assert side * side > 2 * Image.MAX_IMAGE_PIXELS
    return path


# --- configs ----------------------------------------------------------------------------------


def test_config_file_faults_are_one_line_naming_file_and_line(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("_base_: tiny_synthetic\nsolver:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(UserError) as err:
        load_config(dup)
    assert str(err.value) == f"{dup.resolve()}:5: duplicate key 'lr' (first given at line 3); keep one"

    nested = tmp_path / "nested.yaml"  # any depth: inside data.options too
    nested.write_text("_base_: tiny_synthetic\ndata:\n  options:\n    variant: labeled\n    variant: detected\n")
    with pytest.raises(UserError, match=r"nested\.yaml:5: duplicate key 'variant' \(first given at line 4\)"):
        load_config(nested)
    top = tmp_path / "top.yaml"
    top.write_text("_base_: tiny_synthetic\nsolver:\n  lr: 0.1\nsolver:\n  epochs: 3\n")
    with pytest.raises(UserError, match=r"top\.yaml:4: duplicate key 'solver'"):
        load_config(top)
    # an override is not a duplicate: the file's key and --set's both apply, --set last
    assert load_config("tiny_synthetic", ["solver.lr=0.2", "solver.lr=0.3"]).solver.lr == 0.3

    latin = tmp_path / "latin.yaml"
    latin.write_bytes("_base_: tiny_synthetic\n# Réglages\ndata:\n  root: /data/caf".encode("latin-1") + b"\xe9\n")
    with pytest.raises(UserError) as err:
        load_config(latin)
    assert str(err.value) == f"{latin.resolve()}:2: byte 0xE9 at offset 26 is not UTF-8; save the config as UTF-8"


@pytest.mark.parametrize("text,override,message", [
    ("solver:\n  gamma: .nan\n", None, "solver.gamma: expected a finite number, got nan"),
    ("loss:\n  margin: .inf\n", None, "loss.margin: expected a finite number, got inf"),
    ("data:\n  mean: [0.4, -.inf, 0.4]\n", None, "data.mean: expected a finite number, got -inf"),
    ("", "solver.lr=nan", "--set: solver.lr: expected a finite number, got 'nan'"),
    ("", "loss.margin=1e999", "--set: loss.margin: expected a finite number, got '1e999'"),
    ("", "train.seed=-5", "--set: train.seed: -5 must be >= 0"),
    ("", f"train.seed={2**32}", f"--set: train.seed: {2**32} must be <= {2**32 - 1}"),
    ("", "data.height=100000", "--set: data.height: 100000 must be <= 4096"),
])
def test_numeric_keys_finite_and_in_range_at_load(tmp_path, text, override, message):
    path = tmp_path / "c.yaml"
    path.write_text("_base_: tiny_synthetic\n" + text)
    with pytest.raises(UserError) as err:
        load_config(path, [override] if override else [])
    assert str(err.value).endswith(message) and "\n" not in str(err.value)


def test_fit_with_a_negative_seed_refused_before_the_run_folder(tmp_path):
    run = tmp_path / "a" / "run"
    res = CliRunner().invoke(train_main, ["fit", "--config", "tiny_synthetic", "--set", "train.seed=-5", "--set", f"train.output_dir={run}"])
    assert res.exit_code == 2 and one_error_line(res.output) == "error: --set: train.seed: -5 must be >= 0"
    assert not (tmp_path / "a").exists()


# --- images -----------------------------------------------------------------------------------


def test_16bit_grey_png_scaled_to_8_bits_by_every_reader(tmp_path):
    from reid_masks.generate import ImageSource

    grey = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365)  # 0 .. 64155
    grey[0, 0], grey[0, 1], grey[0, 2] = 0xFFFF, 0x00FF, 0x0100
    path = tmp_path / "img" / "g16.png"
    path.parent.mkdir()
    Image.fromarray(grey).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"  # really a 16-bit grey PNG
    expected = np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    assert expected[0, :3, 0].tolist() == [255, 0, 1] and expected.max() == 255 and len(np.unique(expected)) > 40
    assert np.array_equal(read_image(path), expected)  # convert("RGB") gave 255 almost everywhere
    # the mask stage reads the same pixels (it decodes the bytes it fingerprints)
    item = ImageSource(tmp_path / "img", None, None, False).load("query", 0, build_record("g16.png"))
    assert np.array_equal(item.image, expected)
    # and a 16-bit RGB PNG of the same picture (PIL keeps the high byte) gives the same pixels
    rgb16 = tmp_path / "img" / "rgb16.png"
    rgb16.write_bytes(png16_rgb(grey))
    assert np.array_equal(read_image(rgb16), expected)


def build_record(path: str):
    from reid_masks.datasets import Record

    return Record(path, 1, 0, "query")


def png16_rgb(grey: np.ndarray) -> bytes:
    """A 16-bit RGB PNG (colour type 2, depth 16) with grey in every channel, written by hand."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = grey.shape
    rows = b"".join(b"\0" + np.repeat(grey[y][:, None], 3, axis=1).astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bombed(synth_dataset, tmp_path_factory):
    """(root, bomb path, baseline checkpoint with random weights) of a Market copy with a bomb as a query image."""
    from reid_train.engine.trainer import Trainer, save_checkpoint

    work = tmp_path_factory.mktemp("bomb")
    root = shutil.copytree(synth_dataset("market1501", ids=4), work / "m")
    cfg = load_config("tiny_synthetic", [
        "model.name=baseline", f"data.root={root}", "data.cache=", f"train.output_dir={work / 'run'}",
        "data.height=64", "data.width=32", "train.tensorboard=false",
    ])
    trainer = Trainer(cfg)
    save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))
    victim = sorted((root / "query").glob("*.jpg"))[1]
    bomb_png(victim)
    return root, victim, trainer.ckpt_path


def test_bomb_is_an_unreadable_image_in_validate_and_generate(bombed, tmp_path):
    from reid_masks.generate import ImageSource

    root, victim, _ = bombed
    with pytest.raises(UserError) as err:
        read_image(victim)
    assert str(err.value).startswith(f"{victim}: unreadable image (Image size (10000000000 pixels) exceeds limit")
    code, out = masks("validate", "--dataset", "market1501", "--root", root, "--manifest", root / "manifest.json",
                      "--check-images", "--workers", "1")
    lines = out.splitlines()
    assert code == 1 and lines[-2:] == [f"{root}: 1 difference(s) from {root / 'manifest.json'}:", f"  {err.value}"], out
    assert not any("Traceback" in line or "DecompressionBomb" in line for line in lines)
    rel = victim.relative_to(root).as_posix()
    item = ImageSource(root, None, None, False).load("query", 1, build_record(rel))
    assert item.image is None and item.fingerprint != b"missing"  # read, then recorded as an unreadable row


def test_bomb_in_evaluate_and_extract_is_one_line_and_ends(bombed, tmp_path):
    root, victim, ckpt = bombed
    expected = f"error: {victim}: unreadable image (Image size (10000000000 pixels) exceeds limit"
    # a real process: the DataLoader's workers (ignoring SIGTERM) used to keep it from exiting
    proc = subprocess.run(
        [sys.executable, "-m", "reid_train.cli", "evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e.json"),
         "--set", "data.num_workers=2"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2 and one_error_line(proc.stderr).startswith(expected), proc.stderr
    assert not (tmp_path / "e.json").exists()
    res = CliRunner().invoke(train_main, ["extract", "--checkpoint", str(ckpt), "--split", "query", "--out", str(tmp_path / "q.npz"),
                                          "--set", "data.num_workers=0"])
    assert res.exit_code == 2 and one_error_line(res.output).startswith(expected)
    assert list(tmp_path.iterdir()) == []


# --- dataset files and names ------------------------------------------------------------------


@pytest.mark.parametrize("bad,message", [
    (b"\0", "list_query.txt:2: NUL byte at column 5 (expected lines '<pid dir>/<file> <label>'); is the file corrupted?"),
    (b"\xe9", "list_query.txt:2: byte 0xE9 at column 5 is not UTF-8 (expected lines '<pid dir>/<file> <label>' in UTF-8)"),
])
def test_msmt17_list_with_a_nul_or_latin1_byte(synth_dataset, tmp_path, bad, message):
    root = shutil.copytree(synth_dataset("msmt17"), tmp_path / "s")
    lst = root / "list_query.txt"
    lines = lst.read_bytes().splitlines()
    lines[1] = lines[1][:4] + bad + lines[1][4:]
    lst.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(UserError) as err:
        build_dataset("msmt17", root)
    assert str(err.value).startswith(f"{lst}:2:") and message in str(err.value)
    before = sorted(tmp_path.iterdir())
    code, out = masks("generate", "--dataset", "msmt17", "--root", root, "--out", tmp_path / "c.h5", "--workers", "0")
    assert code == 2 and one_error_line(out) == f"error: {err.value}"
    assert sorted(tmp_path.iterdir()) == before  # no lock, no .partial, no cache


def test_non_utf8_file_name_in_a_folder_layout(synth_dataset, tmp_path):
    root = shutil.copytree(synth_dataset("market1501"), tmp_path / "m")
    first = sorted((root / "query").glob("*.jpg"))[0]
    bad = os.fsencode(first.parent) + b"/0001_c1s1_caf\xe9_00.jpg"  # a Latin-1 name, as copied from an old archive
    os.rename(os.fsencode(first), bad)
    expected = f"{root / 'query'}: file name b'0001_c1s1_caf\\xe9_00.jpg' is not UTF-8; rename it"
    for name, options in (("market1501", []), ("folder", ["--dataset-option", r"pattern=^(?P<pid>-1|\d{4})_c(?P<camid>\d)",
                                                          "--dataset-option", "train_dir=bounding_box_train",
                                                          "--dataset-option", "gallery_dir=bounding_box_test"])):
        code, out = masks("generate", "--dataset", name, *options, "--root", root, "--parsing-dir", root / "parsing",
                          "--out", tmp_path / "c.h5", "--workers", "0")
        assert code == 2 and one_error_line(out).startswith(f"error: {expected}"), out
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


# --- output names -----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [245, 251])
def test_out_name_too_long_for_its_temporary_refused_before_work(synth_dataset, tmp_path, length):
    root = synth_dataset("market1501")
    out = tmp_path / ("c" * (length - 3) + ".h5")
    code, msg = masks("generate", "--dataset", "market1501", "--root", root, "--parsing-dir", root / "parsing", "--out", out, "--workers", "0")
    line = one_error_line(msg)
    assert line.startswith(f"error: --out {out}: name too long: '.{out.name}.tmp-") and "would be written beside it" not in line
    assert "(a name written beside it)" in line and "the file system takes at most 255 bytes per name" in line
    assert list(tmp_path.iterdir()) == []  # no chunk computed, no lock, no .partial


def test_check_writable_names(tmp_path):
    fits = tmp_path / ("c" * 230)
    assert check_writable(fits) == fits and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=r"'\.c{230}\.partial\.x{20}' \(a name written beside it\) has 260 bytes"):
        check_writable(fits, also=[f".{fits.name}.partial.{'x' * 20}"])
    deep = tmp_path / ("d" * 256) / "run"
    with pytest.raises(UserError, match=r"^train.output_dir .*: name too long: 'd{256}' \(a folder name of it\) has 256 bytes"):
        check_writable(deep, "train.output_dir", folder=True)
    assert list(tmp_path.iterdir()) == []


# --- size options -----------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--person-size", "100000x100000"], "error: --person-size '100000x100000': each side must be 8 to 1024 pixels, e.g. 256x128"),
    (["--person-size", "0x128"], "error: --person-size '0x128': each side must be 8 to 1024 pixels, e.g. 256x128"),
    (["--chunk-rows", "100000"], "error: --chunk-rows 100000 with --person-size 256x128: a chunk would hold 9.2 GiB of maps "
                                 "in memory, at most 2 GiB; use --chunk-rows 21845 or less"),
    (["--batch-size", "0"], "error: Invalid value for '--batch-size': 0 is not in the range 1<=x<=4096"),
    (["--workers", "1000"], "error: Invalid value for '--workers': 1000 is not in the range 0<=x<=256"),
])
def test_generate_size_options_bounded(synth_dataset, tmp_path, args, message):
    root = synth_dataset("market1501")
    code, out = masks("generate", "--dataset", "market1501", "--root", root, "--out", tmp_path / "c.h5", *args)
    assert code == 2 and one_error_line(out).startswith(message), out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cli,args,message", [
    ("train", ["export", "--atol", "nan", "--checkpoint", "c.pth"], "'--atol': 'nan' is not finite; expected a finite positive number"),
    ("train", ["export", "--atol", "inf", "--checkpoint", "c.pth"], "'--atol': 'inf' is not finite; expected a finite positive number"),
    ("train", ["export", "--atol", "-inf", "--checkpoint", "c.pth"], "'--atol': '-inf' is not finite; expected a finite positive number"),
    ("masks", ["preview", "--scale", "nan", "c.h5"], "'--scale': 'nan' is not finite; expected a finite number in the range 0.1<=x<=16"),
    ("masks", ["synth", "--occlusion-rate", "nan", "--layout", "market1501", "--out", "d"],
     "'--occlusion-rate': 'nan' is not finite; expected a finite number in the range 0<=x<=1"),
    ("masks", ["generate", "--score-threshold", "NaN", "--dataset", "market1501", "--root", "d", "--out", "c.h5"],
     "'--score-threshold': 'NaN' is not finite; expected a finite number in the range 0<=x<=1"),
])
def test_float_options_refuse_nan_and_inf(tmp_path, monkeypatch, cli, args, message):
    """click's FloatRange compares, and nan compares false with everything: it passed every range."""
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(train_main if cli == "train" else masks_main, args)
    assert res.exit_code == 2 and one_error_line(res.output).startswith(f"error: Invalid value for {message}"), res.output
    assert list(tmp_path.iterdir()) == []


def test_finite_float_range_keeps_the_range_check():
    import click

    from reid_masks.cliopts import FiniteFloatRange

    positive = FiniteFloatRange(0, None, min_open=True)
    assert positive.convert("1e-4", None, None) == 1e-4
    with pytest.raises(click.BadParameter, match=r"0\.0 is not in the range x>0"):
        positive.convert("0", None, None)
    with pytest.raises(click.BadParameter, match="'abc' is not a valid float"):
        positive.convert("abc", None, None)


def test_picture_sizes_bounded(synth_dataset, bombed, tmp_path, monkeypatch):
    from reid_masks import visual

    root = synth_dataset("market1501", ids=4)
    cache = make_cache(root)
    # the 64x32 masks of this cache make at most a 143-million-pixel sheet: a lower limit shows the rule
    monkeypatch.setattr(visual, "MAX_PICTURE_PIXELS", 4_000_000)
    code, out = masks("preview", cache, "--root", root, "--out", tmp_path / "p.png", "--n", "10000", "--scale", "16")
    assert code == 2 and one_error_line(out).startswith("error: --n 10000 --scale 16 --cols 4: the sheet of 60 rows would be 10292x15734 pixels")
    assert "pixels, at most 4 million; lower --n or --scale" in out
    monkeypatch.undo()
    code, out = masks("preview", cache, "--out", tmp_path / "p.png", "--seed", "-1")
    assert code == 2 and one_error_line(out).startswith("error: Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295")
    res = CliRunner().invoke(train_main, ["visualize", "--checkpoint", str(bombed[2]), "--out", str(tmp_path / "v"),
                                          "--n", "10000", "--topk", "50", "--tile-height", "2048"])
    assert res.exit_code == 2 and "lower --n, --topk or --tile-height" in one_error_line(res.output)
    assert list(tmp_path.iterdir()) == []
