"""The mask stage under real faults: torn chunks, full disks, signals, a second run, dead temps.

Every test ends with the cache equal to an uninterrupted run (``assert_same_cache``) or a
one-line refusal that loses nothing.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from reid_masks.cache import STATUS, MaskCache
from reid_masks.errors import UserError
from reid_masks.fileio import HOST, OutputLock
from test_generate import assert_same_cache, gen, market, reference, run  # noqa: F401  (fixtures)

IS_ROOT = os.geteuid() == 0


def cli(root: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reid_masks.cli", "generate", "--dataset", "market1501", "--root", str(root),
            "--parsing-dir", str(root / "parsing"), "--out", str(out), *extra]


def stop_before_assembly(monkeypatch) -> None:
    """Make the next in-process run die right after its last chunk (a crash before assembly)."""
    import reid_masks.generate as g

    def crash(*a, **k):
        raise RuntimeError("crash before assembly")

    monkeypatch.setattr(g, "assemble", crash)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- --update -----------------------------------------------------------------------------------


def test_update_after_change_add_and_remove_equals_a_fresh_run(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    out = tmp_path / "u.h5"
    assert gen(root, out, "--chunk-rows", "8")[0] == 0
    train = sorted((root / "bounding_box_train").glob("*.jpg"))
    # changed: pixels of one image; added: a new gallery image; removed: a train image
    shutil.copy(train[5], train[0])
    shutil.copy((root / "parsing/bounding_box_train" / train[5].name).with_suffix(".png"), (root / "parsing/bounding_box_train" / train[0].name).with_suffix(".png"))
    gallery = sorted((root / "bounding_box_test").glob("0*.jpg"))[0]
    new = gallery.with_name("0999_c6s1_000001_01.jpg")
    shutil.copy(gallery, new)
    shutil.copy((root / "parsing/bounding_box_test" / gallery.name).with_suffix(".png"), (root / "parsing/bounding_box_test" / new.name).with_suffix(".png"))
    train[-1].unlink()
    (root / "parsing/bounding_box_train" / train[-1].name).with_suffix(".png").unlink()
    code, msg = gen(root, out, "--chunk-rows", "8")
    assert code == 2 and "stale cache" in msg and "and 1 removed (first: bounding_box_train/" in msg
    code, msg = gen(root, out, "--chunk-rows", "8", "--update")
    assert code == 0, msg  # first try: chunks that need nothing recomputed used to stay pending
    assert "updating 2 changed or added row(s), 1 removed" in msg
    fresh = tmp_path / "fresh.h5"
    assert gen(root, fresh, "--chunk-rows", "8")[0] == 0
    assert_same_cache(out, fresh)


# --- torn chunks ---------------------------------------------------------------------------------


def test_truncated_and_empty_chunks_are_recomputed(market, reference, tmp_path, monkeypatch):
    out = tmp_path / "t.h5"
    stop_before_assembly(monkeypatch)
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code != 0 and not out.exists()
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    chunks = sorted(partial.glob("chunk-*.npz"))
    assert len(chunks) >= 3
    data = chunks[0].read_bytes()
    chunks[0].write_bytes(data[: len(data) // 2])  # torn
    chunks[2].write_bytes(b"")  # empty
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code == 0, msg
    assert f"{chunks[0]}: unreadable" in msg and f"{chunks[2]}: empty file" in msg and "recomputing chunk" in msg
    assert f"resuming: {len(chunks) - 2} of {len(chunks)} chunks" in msg
    assert_same_cache(out, reference)


def test_a_chunk_holding_other_rows_is_recomputed(market, reference, tmp_path, monkeypatch):
    out = tmp_path / "w.h5"
    stop_before_assembly(monkeypatch)
    gen(market, out, "--chunk-rows", "16")
    monkeypatch.undo()
    chunks = sorted(out.with_name(out.name + ".partial").glob("chunk-*.npz"))
    shutil.copy(chunks[1], chunks[0])  # a whole, valid file under the wrong name
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code == 0 and "holds other rows than chunk 0 should" in msg
    assert_same_cache(out, reference)


# --- full disk ------------------------------------------------------------------------------------


@pytest.fixture()
def small_disk(tmp_path):
    """A tmpfs mount of a chosen size (root only), resizable with ``resize(mib)``."""
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(where)], check=True)

    yield where, resize
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_while_writing_chunks_then_resume(market, reference, small_disk):
    where, resize = small_disk
    out = where / "c.h5"
    resize(40)  # room for some chunks, not all
    code, msg = gen(market, out, "--chunk-rows", "8")
    assert code == 2 and msg.count("\n") <= 2, msg
    assert "no space left on device" in msg and "chunk(s) kept there" in msg and "rerun the same command to resume" in msg
    kept = len(list(out.with_name("c.h5.partial").glob("chunk-*.npz")))
    assert kept >= 1 and not out.exists()
    assert not [p for p in out.parent.rglob("*") if ".tmp-" in p.name]
    # the space it says is enough: the disk grown by exactly that much, the rerun finishes
    # (it said 0.8 MiB where 2.3 MiB were needed, before the chunk-to-cache ratio was measured)
    need = float(re.search(r"about ([0-9.]+) MiB more needed", msg)[1])
    used = shutil.disk_usage(where).used
    resize(int(np.ceil((used + need * 2**20) / 1024)))
    code, msg = gen(market, out, "--chunk-rows", "8")
    assert code == 0 and f"resuming: {kept} of" in msg
    assert_same_cache(out, reference)


def test_disk_full_during_assembly_is_one_line_and_no_crash(market, reference, small_disk, monkeypatch, tmp_path):
    """The HDF5 write runs in a child: its crash on a full disk costs neither the parent nor the chunks."""
    import reid_masks.assemble as assemble_mod
    from reid_masks.cache import DEFAULT_PERSON_HW

    where, resize = small_disk
    resize(64 * 1024)
    out = where / "c.h5"
    stop_before_assembly(monkeypatch)
    gen(market, out, "--chunk-rows", "16")
    monkeypatch.undo()
    partial = out.with_name("c.h5.partial")
    used = sum(p.stat().st_size for p in partial.iterdir())
    resize(used // 1024 + 48)  # the chunks fit; the cache beside them does not
    # the estimate check alone would refuse first; bypass it to drive the real write into ENOSPC
    with MaskCache(reference) as ref:
        layout = {s: (ref.num_rows(s), None) for s in ref.splits}
    sources = [{"kind": "chunk", "folder": str(partial), "chunk": int(p.stem.split("-")[1])} for p in sorted(partial.glob("chunk-*.npz"))]
    with pytest.raises(UserError, match="no space left on device while writing c.h5"):
        assemble_mod.assemble(out, layout, {"dataset": "market1501"}, DEFAULT_PERSON_HW, sources, estimate_bytes=0, kept_note="chunks kept")
    assert not out.exists() and not [p for p in where.iterdir() if ".tmp-" in p.name]
    # through the command: the free-space check refuses at once, naming the space needed
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code == 2 and "the cache needs about" in msg and "chunk(s) are kept" in msg, msg
    resize(64 * 1024)
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code == 0, msg
    assert_same_cache(out, reference)


def test_disk_full_injected_in_the_chunk_writer(market, tmp_path, monkeypatch):
    import errno

    from reid_masks.chunks import ChunkStore

    saved = []
    real = ChunkStore.save

    def save(self, g, by_split):
        if len(saved) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(g)
        real(self, g, by_split)

    monkeypatch.setattr(ChunkStore, "save", save)
    code, msg = gen(market, tmp_path / "x.h5", "--chunk-rows", "16")
    lines = [ln for ln in msg.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("generate:")]  # a loaded machine prints progress
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "no space left on device; 2 of" in msg and "needed in all, though" in msg


# --- concurrency, signals, dead processes ------------------------------------------------------


def test_a_second_run_on_the_same_output_is_refused(market, tmp_path):
    out = tmp_path / "l.h5"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from reid_masks.fileio import OutputLock\n"
        f"l = OutputLock({str(out)!r}, 'reid-masks generate (the first run)').acquire(); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, msg = gen(market, out)
        assert code == 2 and msg.count("\n") == 1
        assert f"another run is writing it (pid {holder.pid} on " in msg and "the first run" in msg
    finally:
        holder.kill()
        holder.wait()
    # the holder died without unlocking: the lock went with it
    assert gen(market, out)[0] == 0


def child_pids(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def wait_for_chunks(partial: Path, n: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(partial.glob("chunk-*.npz"))) < n and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before the test could stop it: use a larger dataset"


@pytest.fixture(scope="module")
def long_market(synth_dataset) -> Path:
    """A set that parsing-PNG generate needs over half a second for on a quiet 2-core machine (6 ids
    took 0.2 s: a signal sent after the third chunk could arrive after the run had finished)."""
    return synth_dataset("market1501", ids=16, seed=2)


@pytest.fixture(scope="module")
def long_reference(long_market, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long-ref") / "market.h5"
    code, msg = gen(long_market, out)
    assert code == 0, msg
    return out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_keeps_finished_chunks_with_one_line(long_market, long_reference, tmp_path, signum):
    market, reference = long_market, long_reference
    out = tmp_path / "s.h5"
    proc = subprocess.Popen(cli(market, out, "--chunk-rows", "2", "--workers", "1", "--batch-size", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = out.with_name(out.name + ".partial")
    wait_for_chunks(partial, 3, proc)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("generate:")]
    assert proc.returncode == 128 + signum, stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted by {signal.Signals(signum).name}: "), stderr
    assert "finished chunk(s) kept in" in lines[0] and "rerun the same command to resume" in lines[0]
    assert "Traceback" not in stderr and not out.exists()
    kept = len(list(partial.glob("chunk-*.npz")))
    assert kept >= 3
    code, msg = gen(market, out, "--chunk-rows", "2")
    assert code == 0 and f"resuming: {kept} of" in msg
    assert_same_cache(out, reference)


def test_workers_die_with_a_killed_parent(long_market, tmp_path):
    market = long_market
    out = tmp_path / "k.h5"
    proc = subprocess.Popen(cli(market, out, "--chunk-rows", "2", "--workers", "2", "--batch-size", "1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_chunks(out.with_name(out.name + ".partial"), 2, proc)
    workers = child_pids(proc.pid)
    assert workers, "expected DataLoader worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3] for w in workers):
        time.sleep(0.1)
    alive = [w for w in workers if Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1][:3]]
    assert not alive, f"orphaned workers {alive}"


def test_leftover_temps_of_dead_processes_are_removed(market, tmp_path):
    out = tmp_path / "d.h5"
    partial = out.with_name(out.name + ".partial")
    partial.mkdir()
    dead = dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cache_tmp = tmp_path / f".d.h5.tmp-{HOST}-{dead}"
        chunk_tmp = partial / f".chunk-000001.npz.tmp-{HOST}-{dead}.npz"
        live_tmp = tmp_path / f".d.h5.tmp-{HOST}-{live.pid}"
        other_host = tmp_path / f".d.h5.tmp-elsewhere-{dead}"
        for p in (cache_tmp, chunk_tmp, live_tmp, other_host):
            p.write_bytes(b"x" * 1000)
        assert gen(market, out)[0] == 0
        assert not cache_tmp.exists() and not chunk_tmp.exists()
        assert live_tmp.exists() and other_host.exists()  # a live writer's, and one this host cannot check
    finally:
        live.kill()
        live.wait()


# --- what the run says ---------------------------------------------------------------------------


def test_summary_of_bad_rows_and_strict_mode(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    victims = sorted((root / "bounding_box_train").glob("*.jpg"))[:2]
    victims[0].write_bytes(victims[0].read_bytes()[:100])  # truncated
    victims[1].write_bytes(b"")  # zero bytes
    out = tmp_path / "b.h5"
    code, msg = gen(root, out)
    assert code == 0
    warn = [ln for ln in msg.splitlines() if ln.startswith("warning: ")]
    assert len(warn) == 1 and "2 row(s) unreadable (first: " in warn[0] and victims[0].name in warn[0]
    assert "--update" in warn[0]
    out2 = tmp_path / "b2.h5"
    code, msg = gen(root, out2, "--strict")
    assert code == 1 and "--strict: 2 unreadable image(s)" in msg and out2.is_file()


def test_up_to_date_rerun_writes_nothing_and_says_so(market, reference, tmp_path):
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    before = out.stat().st_mtime_ns
    code, msg = gen(market, out)
    assert code == 0 and "up to date" in msg and "wrote" not in msg
    assert out.stat().st_mtime_ns == before


def test_dangling_symlink_is_an_unreadable_row(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    victim = sorted((root / "query").glob("*.jpg"))[0]
    victim.unlink()
    victim.symlink_to(tmp_path / "gone.jpg")
    out = tmp_path / "s.h5"
    code, msg = gen(root, out)
    assert code == 0, msg
    with MaskCache(out) as c:
        paths = list(c.column("query", "path"))
        assert f"query/{victim.name}" in paths
        assert c.column("query", "status")[paths.index(f"query/{victim.name}")] == STATUS["unreadable"]


def test_progress_never_reports_a_rate_it_cannot_measure():
    from reid_masks.progress import Progress

    buf = io.StringIO()
    p = Progress(total=8, every=0.0, stream=buf)
    p.update(8)  # the whole run in one batch
    assert "img/s" not in buf.getvalue() and "8/8 images" in buf.getvalue()
    buf = io.StringIO()
    p = Progress(total=30, every=0.0, stream=buf)
    p.update(10)
    p.start -= 2.0  # 10 more images took 2 s after the first batch
    p.update(10)
    line = buf.getvalue().strip().split("\r")[-1]
    assert "20/30 images" in line and " 5.0 img/s" in line and "ETA 0m02s" in line


def test_merge_of_shards_from_different_image_sets_says_so(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    victim = sorted((root / "bounding_box_test").glob("0*.jpg"))[0]
    victim.unlink()
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert gen(market, a, "--shard", "0/2", "--chunk-rows", "16")[0] == 0
    assert gen(root, b, "--shard", "1/2", "--chunk-rows", "16")[0] == 0
    code, msg = run("merge", tmp_path / "a.shard0of2.h5", tmp_path / "b.shard1of2.h5", "--out", tmp_path / "m.h5")
    assert code == 2 and "made from different image sets" in msg and msg.count("\n") == 1
    assert not (tmp_path / "m.h5").exists()


def test_a_root_where_no_listed_image_exists_is_refused_at_once(synth_dataset, tmp_path):
    msmt = synth_dataset("msmt17")
    root = tmp_path / "lists-only"
    root.mkdir()
    for lst in msmt.glob("list_*.txt"):
        shutil.copy(lst, root / lst.name)
    (root / "train").mkdir()
    (root / "test").mkdir()
    code, msg = run("generate", "--dataset", "msmt17", "--root", root, "--out", tmp_path / "x.h5", "--backend", "none", "--parsing-dir", msmt / "parsing")
    assert code == 2 and "none of" in msg and "is --root the dataset's folder?" in msg, msg
    assert not (tmp_path / "x.h5.partial").exists()


# --- assembly child and merge: kill -9, signals, read-only folder -----------------------------


def assembly_child(pid: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Wait for the ``python -m reid_masks.assemble`` child of ``pid``; its pid."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for c in child_pids(pid):
            try:
                if b"reid_masks.assemble" in Path(f"/proc/{c}/cmdline").read_bytes():
                    return c
            except OSError:
                pass
        time.sleep(0.002)
    raise AssertionError("no assembly child seen before the run ended")


def alive(pid: int) -> bool:
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
    except OSError:
        return False


def test_assembly_child_dies_with_a_killed_parent_and_the_next_run_cleans_up(market, reference, tmp_path, monkeypatch):
    out = tmp_path / "a.h5"
    stop_before_assembly(monkeypatch)
    gen(market, out, "--chunk-rows", "16")
    monkeypatch.undo()
    # the parent: assemble() as generate calls it, in a process of its own (without the CLI's torch import)
    partial = out.with_name(out.name + ".partial")
    with MaskCache(reference) as ref:
        layout = {s: (ref.num_rows(s), None) for s in ref.splits}
    sources = [{"kind": "chunk", "folder": str(partial), "chunk": int(p.stem.split("-")[1])} for p in sorted(partial.glob("chunk-*.npz"))]
    proc = subprocess.Popen([sys.executable, "-c", (
        "import json, sys; from pathlib import Path; from reid_masks.assemble import assemble\n"
        f"assemble(Path({str(out)!r}), json.loads({json.dumps(layout)!r}), {{}}, (256, 128), json.loads({json.dumps(sources)!r}), 0, 'kept')")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.getcwd()})
    child = assembly_child(proc.pid, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and alive(child):
        time.sleep(0.02)
    assert not alive(child), "the assembly child outlived its killed parent"
    left = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert f".a.h5.tmp-{HOST}-{proc.pid}.json" in left  # the job file the killed run could not remove
    code, msg = gen(market, out, "--chunk-rows", "16")
    assert code == 0, msg
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert_same_cache(out, reference)


@pytest.fixture()
def shards(market, tmp_path) -> list[Path]:
    assert gen(market, tmp_path / "s.h5", "--shard", "0/2", "--chunk-rows", "16")[0] == 0
    assert gen(market, tmp_path / "s.h5", "--shard", "1/2", "--chunk-rows", "16")[0] == 0
    return [tmp_path / "s.shard0of2.h5", tmp_path / "s.shard1of2.h5"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_merge_stopped_by_a_signal_says_so_and_leaves_no_temp(shards, reference, tmp_path, signum):
    out = tmp_path / "m.h5"
    proc = subprocess.Popen([sys.executable, "-m", "reid_masks.cli", "merge", *map(str, shards), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assembly_child(proc.pid, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: interrupted by {signal.Signals(signum).name}: {out} not written"), stderr
    assert "shard files are untouched" in lines[0] and "rerun the same command" in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    code, msg = run("merge", *shards, "--out", out)
    assert code == 0, msg
    assert_same_cache(out, reference)


def test_merge_into_a_read_only_folder_is_one_line(shards, tmp_path):
    if not IS_ROOT:
        pytest.skip("mounting a read-only tmpfs needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, msg = run("merge", *shards, "--out", ro / "m.h5")
        assert code == 2 and msg.count("\n") == 1, msg
        assert f"{ro}: output folder is not writable (Read-only file system; --out {ro / 'm.h5'})" in msg
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)
