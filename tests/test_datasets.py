"""Dataset adapters on synthetic copies of every real layout."""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from reid_masks.datasets import build_dataset, load_manifest
from reid_masks.errors import UserError


def facts(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc", "msmt17"])
def test_counts_match_the_synthetic_manifest(synth_dataset, layout):
    root = synth_dataset(layout)
    ds = build_dataset(layout, root)
    for split in ("train", "query", "gallery"):
        recs = ds.split(split)
        assert len(recs) == facts(root)["splits"][split]["images"]
        assert len({r.pid for r in recs}) == facts(root)["splits"][split]["ids"]
        assert all((root / r.path).is_file() for r in recs)
        assert all(r.split == split for r in recs)


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc", "msmt17"])
def test_train_pids_relabelled_test_pids_kept(synth_dataset, layout):
    ds = build_dataset(layout, synth_dataset(layout))
    assert sorted({r.pid for r in ds.train}) == list(range(ds.num_train_pids))
    if layout != "msmt17":  # Market/Duke query ids are the file names' ids
        for r in ds.query + ds.gallery:
            assert int(Path(r.path).name.split("_")[0]) == r.pid


def test_train_relabel_preserves_identity_grouping(synth_dataset):
    ds = build_dataset("market1501", synth_dataset("market1501"))
    original = {r.path: int(Path(r.path).name.split("_")[0]) for r in ds.train}
    mapping = {}
    for r in ds.train:
        mapping.setdefault(original[r.path], set()).add(r.pid)
    assert all(len(v) == 1 for v in mapping.values())
    # increasing original id -> increasing label
    order = sorted(mapping)
    assert [next(iter(mapping[p])) for p in order] == list(range(len(order)))


def test_market_junk_dropped_distractors_kept(synth_dataset):
    root = synth_dataset("market1501")
    ds = build_dataset("market1501", root)
    files = sorted((root / "bounding_box_test").glob("*.jpg"))
    junk = [f for f in files if f.name.startswith("-1_")]
    distractors = [f for f in files if f.name.startswith("0000_")]
    assert junk and distractors
    pids = Counter(r.pid for r in ds.gallery)
    assert -1 not in pids
    assert pids[0] == len(distractors)
    assert len(ds.gallery) == len(files) - len(junk)


@pytest.mark.parametrize("layout,cams", [("market1501", 6), ("dukemtmc", 8), ("msmt17", 15)])
def test_cameras_zero_based(synth_dataset, layout, cams):
    ds = build_dataset(layout, synth_dataset(layout))
    camids = {r.camid for r in ds.train + ds.query + ds.gallery}
    assert min(camids) >= 0 and max(camids) < cams
    if layout == "market1501":
        for r in ds.query:
            assert r.camid == int(re.search(r"_c(\d)s", r.path).group(1)) - 1


def test_msmt17_train_includes_val_list(synth_dataset):
    root = synth_dataset("msmt17")
    ds = build_dataset("msmt17", root)
    n_train = len((root / "list_train.txt").read_text().splitlines())
    n_val = len((root / "list_val.txt").read_text().splitlines())
    assert n_val > 0 and len(ds.train) == n_train + n_val
    assert all(r.path.startswith("train/") for r in ds.train)
    assert all(r.path.startswith("test/") for r in ds.query + ds.gallery)
    for r in ds.query[:5]:
        assert r.camid == int(Path(r.path).name.split("_")[2]) - 1


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_new_protocol(synth_dataset, variant):
    root = synth_dataset("cuhk03")
    ds = build_dataset("cuhk03", root, variant=variant)
    spec = facts(root)["variants"][variant]["splits"]
    for split in ("train", "query", "gallery"):
        assert len(ds.split(split)) == spec[split]["images"]
        assert len({r.pid for r in ds.split(split)}) == spec[split]["ids"]
    assert (root / f"images_{variant}").is_dir()
    assert all((root / r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    # test identities are the split file's labels above the training ones; one query per view
    assert min(r.pid for r in ds.query + ds.gallery) > facts(root)["ids_per_split"]
    per_pid = Counter((r.pid, r.camid) for r in ds.query)
    assert set(per_pid.values()) == {1} and {c for _, c in per_pid} == {0, 1}
    assert sorted({r.pid for r in ds.train}) == list(range(len({r.pid for r in ds.train})))


@pytest.mark.parametrize("variant", ["labeled", "detected"])
def test_cuhk03_classic_splits_from_the_mat_testsets(synth_dataset, variant):
    import h5py
    import numpy as np

    root = synth_dataset("cuhk03")
    classic = facts(root)["classic"]
    assert classic["splits"] == 20 and classic["test_ids"] + classic["train_ids"] == classic["ids"] == 8
    # every image of the variant, read straight from the .mat: (pair, person) -> number of images
    with h5py.File(root / "cuhk03_release/cuhk-03.mat", "r") as mat:
        images = {}
        for pair, ref in enumerate(mat[variant][0]):
            cells = mat[ref][()].T
            for person in range(cells.shape[0]):
                images[(pair + 1) * 1000 + person + 1] = sum(mat[r][()].ndim == 3 for r in cells[person])
        tests = [{int(a) * 1000 + int(b) for a, b in mat[r][()].T} for r in mat["testsets"][0]]
    seen = []
    for split_id in (0, 7, 19):
        ds = build_dataset("cuhk03", root, variant=variant, protocol="classic", split_id=split_id)
        assert ds.info == {"variant": variant, "protocol": "classic", "split_id": split_id}
        test_ids = {r.pid for r in ds.query}
        assert test_ids == tests[split_id] and len(test_ids) == classic["test_ids"]
        assert ds.query == [r._replace(split="query") for r in ds.gallery]  # query = gallery
        assert len(ds.query) == sum(images[p] for p in test_ids)
        assert len(ds.train) == sum(n for p, n in images.items() if p not in test_ids)
        assert len({r.pid for r in ds.train}) == classic["train_ids"]
        # identities are disjoint: the train images are exactly those of the other people
        train_people = {int(r.path.split("/")[1][0]) * 1000 + int(r.path.split("/")[1][2:5]) for r in ds.train}
        assert train_people.isdisjoint(test_ids) and train_people | test_ids == set(images)
        assert {r.camid for r in ds.query} == {0, 1} and all(r.camid == int(r.path.split("_")[-2]) - 1 for r in ds.query)
        assert all((root / r.path).is_file() for r in ds.train + ds.query)
        seen.append(test_ids)
    assert seen[0] != seen[1] or seen[1] != seen[2]
    with pytest.raises(UserError, match=r"split_id=20 out of range; .*cuhk-03.mat has 20 classic splits"):
        build_dataset("cuhk03", root, variant=variant, protocol="classic", split_id=20)
    with pytest.raises(UserError, match=r"split_id=3 needs protocol=classic"):
        build_dataset("cuhk03", root, variant=variant, split_id=3)
    with pytest.raises(UserError, match=r"protocol='old': expected one of new, classic"):
        build_dataset("cuhk03", root, protocol="old")
    assert np.array_equal(sorted(r.pid for r in build_dataset("cuhk03", root, variant=variant).query),
                          sorted(r.pid for r in build_dataset("cuhk03", root, variant=variant, protocol="new").query))


def test_cuhk03_extraction_reused_and_images_match_mat(synth_dataset, tmp_path):
    import h5py
    import numpy as np
    from PIL import Image

    src = synth_dataset("cuhk03")
    root = tmp_path / "c"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("images_*"))
    ds = build_dataset("cuhk03_labeled", root)
    first = root / ds.train[0].path
    mtime = first.stat().st_mtime_ns
    build_dataset("cuhk03", root, variant="labeled")
    assert first.stat().st_mtime_ns == mtime, "extraction must run once and be reused"
    # the extracted PNG equals the image stored in the .mat (pair 1-based, pid 1-based, cell 1-based)
    pair, pid, _, cell = (int(x) for x in first.stem.split("_"))
    with h5py.File(root / "cuhk03_release/cuhk-03.mat", "r") as mat:
        cells = mat[mat["labeled"][0][pair - 1]][()].T
        img = mat[cells[pid - 1][cell - 1]][()].T
    assert np.array_equal(np.asarray(Image.open(first)), img)


def test_folder_layout_with_user_regex(synth_dataset):
    root = synth_dataset("market1501")
    ds = build_dataset(
        "folder", root, pattern=r"^(?P<pid>-1|\d{4})_c(?P<camid>\d)s", train_dir="bounding_box_train",
        gallery_dir="bounding_box_test", camera_base=1, junk_pid=-1,
    )
    ref = build_dataset("market1501", root)
    assert ds.train == ref.train and ds.query == ref.query and ds.gallery == ref.gallery


def test_manifests_hold_spec_facts():
    m = load_manifest("market1501")["splits"]
    assert (m["train"]["images"], m["train"]["ids"], m["query"]["images"]) == (12936, 751, 3368)
    assert m["gallery"]["files"] - m["gallery"]["junk"] == m["gallery"]["images"] == 15913
    d = load_manifest("dukemtmc")["splits"]
    assert (d["train"]["images"], d["query"]["images"], d["gallery"]["images"]) == (16522, 2228, 17661)
    c = load_manifest("cuhk03")["variants"]
    assert c["labeled"]["splits"]["gallery"]["images"] == 5328 and c["detected"]["splits"]["gallery"]["images"] == 5332
    s = load_manifest("msmt17")["splits"]
    assert (s["train"]["images"], s["query"]["images"], s["gallery"]["images"]) == (32621, 11659, 82161)


# --- bad input: one line naming the path and what was expected ---------------------------------


def test_missing_root():
    with pytest.raises(UserError, match=r"/nope: dataset root not found"):
        build_dataset("market1501", "/nope")


def test_missing_split_folder(synth_dataset, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(synth_dataset("market1501"), root)
    shutil.rmtree(root / "query")
    with pytest.raises(UserError, match=r"query: split folder for 'query' not found"):
        build_dataset("market1501", root)


def test_unparseable_names(synth_dataset, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(synth_dataset("market1501"), root)
    shutil.copy(next((root / "query").glob("*.jpg")), root / "query" / "holiday.jpg")
    with pytest.raises(UserError, match=r"1 file name\(s\) do not match .*first: holiday.jpg"):
        build_dataset("market1501", root)


def torchreid_new_split(mat: dict) -> dict[str, list[tuple[str, int, int]]]:
    """torchreid's CUHK03 new-protocol reading (cuhk03.py ``_extract_new_split``), restated: the
    1-based index arrays minus one index ``labels`` and ``filelist`` directly (so they must be
    integers), train ids relabelled in order of first sight, camera from the name's third field."""
    pids = mat["labels"].flatten()
    names = mat["filelist"].flatten()
    out = {}
    train_rows = mat["train_idx"].flatten() - 1
    relabel = {pid: n for n, pid in enumerate(set(pids[train_rows]))}
    for key in ("train", "query", "gallery"):
        rows = mat[f"{key}_idx"].flatten() - 1
        out[key] = [(names[i][0], int(relabel[pids[i]] if key == "train" else pids[i]), int(names[i][0].split("_")[2]) - 1)
                    for i in rows]
    return out


def test_cuhk03_split_files_read_by_torchreids_logic_and_ours(synth_dataset, tmp_path):
    """The synthetic split files hold integer arrays of MATLAB class double, as the authors' files do
    (there: camId uint8, labels and the index arrays uint16), so torchreid's reading works; ours reads
    them and a float64 re-save alike, and refuses fractional indices."""
    import numpy as np
    import scipy.io

    from reid_masks.datasets.cuhk03 import read_split_mat

    root = synth_dataset("cuhk03")
    path = root / "cuhk03_new_protocol_config_labeled.mat"
    assert {cls for name, _, cls in scipy.io.whosmat(path) if name != "filelist"} == {"double"}
    mat = scipy.io.loadmat(path)
    assert all(mat[k].dtype.kind == "u" for k in ("labels", "camId", "train_idx", "query_idx", "gallery_idx"))
    theirs = torchreid_new_split(mat)
    ds = build_dataset("cuhk03", root, variant="labeled")
    for key in ("query", "gallery"):
        assert theirs[key] == [(Path(r.path).name, r.pid, r.camid) for r in ds.split(key)]
    assert sorted((n, c) for n, _, c in theirs["train"]) == sorted((Path(r.path).name, r.camid) for r in ds.train)
    assert len({p for _, p, _ in theirs["train"]}) == len({r.pid for r in ds.train})

    floats = {k: (v.astype(np.float64) if k != "filelist" else v) for k, v in mat.items() if not k.startswith("__")}
    legacy = tmp_path / "float64.mat"
    scipy.io.savemat(legacy, floats)
    with pytest.raises(IndexError):  # what torchreid does with float64 index arrays
        torchreid_new_split(scipy.io.loadmat(legacy))
    ours, again = read_split_mat(path), read_split_mat(legacy)
    assert all(np.array_equal(ours[k], again[k]) for k in ours)
    floats["query_idx"] = floats["query_idx"] + 0.5
    scipy.io.savemat(legacy, floats)
    with pytest.raises(UserError, match=r"float64.mat: query_idx must hold whole numbers"):
        read_split_mat(legacy)


def test_wrong_layout_for_dataset(synth_dataset):
    with pytest.raises(UserError, match="list_train.txt not found"):
        build_dataset("msmt17", synth_dataset("market1501"))


def test_wrong_kind_of_mat_file(synth_dataset, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(synth_dataset("cuhk03"), root)
    (root / "cuhk03_new_protocol_config_labeled.mat").write_bytes(b"this is not a mat file")
    with pytest.raises(UserError, match=r"cuhk03_new_protocol_config_labeled.mat: expected a MATLAB v5 CUHK03"):
        build_dataset("cuhk03", root)


def test_split_mat_without_protocol_keys(synth_dataset, tmp_path):
    import numpy as np
    import scipy.io

    root = tmp_path / "c"
    shutil.copytree(synth_dataset("cuhk03"), root)
    scipy.io.savemat(root / "cuhk03_new_protocol_config_detected.mat", {"x": np.zeros(3)})
    with pytest.raises(UserError, match=r"not a CUHK03 new-protocol split file \(missing train_idx"):
        build_dataset("cuhk03", root, variant="detected")


def test_raw_mat_of_wrong_kind(synth_dataset, tmp_path):
    root = tmp_path / "c"
    shutil.copytree(synth_dataset("cuhk03"), root, ignore=shutil.ignore_patterns("images_*"))
    (root / "cuhk03_release/cuhk-03.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(UserError, match=r"cuhk-03.mat: expected the MATLAB v7.3 \(HDF5\)"):
        build_dataset("cuhk03", root)


def test_unknown_dataset_and_option(synth_dataset):
    with pytest.raises(UserError, match="unknown dataset 'market'"):
        build_dataset("market", "/tmp")
    with pytest.raises(UserError, match="market1501: unknown dataset option.s. variant; market1501 takes no options"):
        build_dataset("market1501", synth_dataset("market1501"), variant="x")
    with pytest.raises(UserError, match=r"cuhk03: unknown dataset option.s. pattern; valid: variant \(one of labeled, detected\)"):
        build_dataset("cuhk03", synth_dataset("market1501"), pattern="x")
