"""One command that proves reid-masks / reid-train's CUDA paths and measures the GPU targets.

    python benchmarks/gpu_check.py                        # a CUDA machine: every check, <= 8 minutes
    python benchmarks/gpu_check.py --device cpu --smoke   # CI: tiny sizes, CPU figures, about a minute

It needs no weights and no data from outside: random weights (asked for explicitly,
``--random-weights``) and the project's synthetic datasets (``reid-masks synth`` layouts).
It prints one Markdown table (check, status, value, target, verdict, seconds, detail) and
writes the same rows as JSON (``--json``, default ``gpu_check.json``).

* **Smoke rows** run the real command lines a user runs first: ``reid-masks generate``
  (torchvision backend, SCHP parser, parsing PNGs), ``reid-train fit`` (baseline, MMGA, MGRAN
  with ``train.amp`` bf16 and fp16, ``channels_last``), ``fit --resume``, ``evaluate`` (flip +
  re-ranking), ``extract``, ``export`` (ONNX, TorchScript) and ``torchrun ... fit``, plus a
  DDP step under ``torchrun`` (NCCL on CUDA, gloo on CPU). Each row checks the command's
  outputs (row counts, checkpoint epoch, result keys, feature norms, export parity).
* **Throughput rows** reuse the benchmark scripts next to this file (bench_generate,
  bench_parser, bench_train, bench_mgran, bench_eval) and compare with the targets of
  docs/benchmarks.md; on CPU or with ``--smoke`` they are marked as CPU / smoke figures.

Every check runs in its own process with a timeout; a failure records the end of its
output and the next check runs. A global time budget (``--budget``) skips a check that
cannot finish in time ("skipped: time budget") instead of overrunning. On CUDA a child is
a fresh interpreter (what a user runs); on CPU it is forked from this process after the
heavy imports (CUDA must never be initialised before a fork), which keeps the CPU smoke
near a minute on two cores. ``--only fit/mmga,speed`` reruns some checks (and what they need).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(HERE), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

log = logging.getLogger("gpu_check")

PASS, FAIL, TIMEOUT = "pass", "fail", "timeout"
NOT_JUDGED = "not judged"  # a throughput row that ran where its GPU target does not apply (CPU, smoke sizes)


def succeeded(status: str) -> bool:
    """Whether a row's check ran without error (a throughput row off the GPU is 'not judged', not 'pass')."""
    return status in (PASS, NOT_JUDGED)
NA_CPU = "n/a on cpu"
SKIP_BUDGET = "skipped: time budget"
DEFAULT_BUDGET_S = {False: 420.0, True: 900.0}  # full run (<= 8 min with start-up and slack) / --smoke
DDP_PROBE_TAG = "DDP_PROBE "

# Targets (docs/benchmarks.md; defined for one H100-class GPU at full size).
TARGET_BATCHED_VS_LOOP = 5.0  # x
TARGET_GENERATE_IPS = 120.0  # img/s end to end: Market-1501 (32,668 images) in about 5 minutes
TARGET_MMGA_IPS = 1500.0  # img/s, 384x128, P x K = 24 x 4, bf16 + channels_last
TARGET_OVERHEAD_PCT = 10.0  # MMGA over the baseline
# FSA (256x128, P x K = 16 x 4, bf16 + channels_last): the paper's 120-epoch recipe on Market-1501
# (12,936 training images x 120 = 1.55 M images) in about 17 minutes
TARGET_FSA_IPS = 1500.0


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the full run and ``--smoke``."""

    synth_ids: int  # identities of the synthetic Market set of the smoke rows
    detector_set: str  # "small" (that set) or "mini" (one image per split) for the detector/parser CLI rows
    detector_shard: Optional[tuple[int, int]]  # generate --shard i/n --chunk-rows 1 for those rows (None: every image)
    min_size: int  # generate --min-size (detector input short side)
    score_threshold: Optional[float]  # generate --score-threshold (0: random weights keep 100 persons, heads run)
    gen_batch: int
    gen_workers: int
    backbone: str
    height: int
    width: int
    p: int
    k: int
    data_workers: int
    epochs: int
    test_batch: int
    # throughput
    speed_min_size: int
    speed_proposals: int
    speed_dets: int
    speed_batch: int
    speed_loop_images: int
    speed_batched_images: int
    e2e_ids: int  # synthetic Market set for generate end to end (0: the mini set)
    schp_input: int
    schp_batches: tuple[int, ...]
    schp_timed: int
    train_backbone: str
    train_height: int
    train_width: int
    train_batch: int
    train_warmup: int
    train_iters: int
    train_repeats: int
    mgran_iters: int
    mgran_rounds: int
    eval_q: int
    eval_g: int
    eval_ids: int
    eval_dim: int


FULL = Sizes(
    synth_ids=8, detector_set="small", detector_shard=None, min_size=256, score_threshold=0.0, gen_batch=32, gen_workers=4,
    backbone="resnet50", height=384, width=128, p=4, k=4, data_workers=4, epochs=2, test_batch=64,
    speed_min_size=256, speed_proposals=1000, speed_dets=2, speed_batch=32, speed_loop_images=32,
    speed_batched_images=256, e2e_ids=110, schp_input=473, schp_batches=(1, 8, 16, 32, 64), schp_timed=3,
    train_backbone="resnet50", train_height=384, train_width=128, train_batch=96, train_warmup=5, train_iters=20,
    train_repeats=3, mgran_iters=10, mgran_rounds=2, eval_q=11659, eval_g=82161, eval_ids=3060, eval_dim=2048,
)
SMOKE = Sizes(
    synth_ids=2, detector_set="mini", detector_shard=(0, 3), min_size=32, score_threshold=None, gen_batch=4, gen_workers=0,
    backbone="resnet18", height=64, width=32, p=2, k=2, data_workers=0, epochs=1, test_batch=16,
    speed_min_size=32, speed_proposals=16, speed_dets=1, speed_batch=2, speed_loop_images=2,
    speed_batched_images=2, e2e_ids=0, schp_input=64, schp_batches=(1, 2), schp_timed=1,
    train_backbone="resnet18", train_height=64, train_width=32, train_batch=8, train_warmup=1, train_iters=1,
    train_repeats=1, mgran_iters=1, mgran_rounds=1, eval_q=300, eval_g=1500, eval_ids=50, eval_dim=64,
)


# --------------------------------------------------------------------------- rows


@dataclass
class Row:
    """One line of the table (and of the JSON)."""

    id: str
    what: str
    status: str = "not run"
    seconds: Optional[float] = None
    value: Optional[float] = None
    unit: str = ""
    target: str = ""
    verdict: str = ""
    detail: str = ""
    error: str = ""


def target_verdict(value: float, op: str, bound: float, figure: str) -> str:
    """'met' / 'missed' against ``op bound`` (op '>=' or '<='), or ``figure`` (e.g. 'cpu, not judged') when not comparable."""
    if figure:
        return figure
    if not math.isfinite(value):
        return "missed"
    ok = value >= bound if op == ">=" else value <= bound
    return "met" if ok else "missed"


def overhead_pct(reference_ips: float, model_ips: float) -> float:
    """Extra time per image of ``model`` over ``reference``, in percent (same images, same step)."""
    return 100.0 * (reference_ips / model_ips - 1.0)


def bounding_stage(e2e_s: float, stages: dict[str, float], alone: float = 0.6) -> tuple[str, dict[str, float]]:
    """Which stage bounds an overlapped pipeline: the one whose time alone is the largest share of the
    end-to-end time (stages run concurrently, so the slowest one sets the pace); 'mixed' when none
    reaches ``alone`` of it (then start-up, hand-over and contention between the stages dominate)."""
    shares = {name: s / e2e_s for name, s in stages.items()}
    name = max(shares, key=shares.get)
    return (name if shares[name] >= alone else "mixed"), shares


def fmt_value(v: Optional[float]) -> str:
    if v is None:
        return "-"
    if not math.isfinite(v):
        return str(v)
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.3g}"


def format_table(rows: list[Row]) -> str:
    """The Markdown table printed at the end (and pasted into docs/benchmarks.md)."""
    lines = ["| check | status | value | target | verdict | s | detail |", "|---|---|---:|---|---|---:|---|"]
    for r in rows:
        value = "-" if r.value is None else f"{fmt_value(r.value)} {r.unit}".strip()
        secs = "-" if r.seconds is None else f"{r.seconds:.1f}"
        detail = (r.detail or "").replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.id} | {r.status} | {value} | {r.target or '-'} | {r.verdict or '-'} | {secs} | {detail} |")
    return "\n".join(lines)


def format_errors(rows: list[Row], lines: int = 15) -> str:
    out = []
    for r in rows:
        if r.error and r.status in (FAIL, TIMEOUT):
            tail = "\n".join(r.error.strip().splitlines()[-lines:])
            out.append(f"--- {r.id} ({r.status}):\n{tail}")
    return "\n".join(out)


# --------------------------------------------------------------------------- child processes


@dataclass
class Command:
    """A console entry point and its arguments: ``module.main(args=argv)`` / ``python -m module argv``."""

    module: str  # "reid_masks.cli", "reid_train.cli", "torch.distributed.run", or SELF
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def display(self) -> str:
        name = {"reid_masks.cli": "reid-masks", "reid_train.cli": "reid-train", "torch.distributed.run": "torchrun",
                SELF: "python benchmarks/gpu_check.py"}.get(self.module, self.module)
        return " ".join([name, *self.argv])


SELF = "gpu_check"


@dataclass
class Outcome:
    rc: int
    seconds: float
    timed_out: bool
    output: str
    cpu_s: float = float("nan")  # CPU seconds of the child and the children it waited for


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (children run this checkout's code)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _read_tail(path: Path, limit: int = 20000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                return
            time.sleep(0.05)


def run_spawned(cmd: Command, logfile: Path, timeout: float, cwd: Path) -> Outcome:
    """``cmd`` in a fresh interpreter (its own process group, killed whole on timeout)."""
    argv = [sys.executable, str(Path(__file__).resolve())] if cmd.module == SELF else [sys.executable, "-m", cmd.module]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(argv + cmd.argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=child_env(cmd.env),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            rc, timed_out = -signal.SIGKILL, True  # killed by us (_kill_group may have reaped its status)
        except BaseException:  # Ctrl-C reaches only this process (the child has its own session)
            _kill_group(proc.pid)
            raise
    return Outcome(rc, time.perf_counter() - t0, timed_out, _read_tail(logfile), _children_cpu() - cpu0)


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _call_main(cmd: Command) -> int:
    """Run ``cmd`` in this (forked) process the way its console script would."""
    main_fn = main if cmd.module == SELF else importlib.import_module(cmd.module).main
    try:
        rc = main_fn(args=cmd.argv)
    except SystemExit as exc:
        rc = exc.code
    if rc is None:
        return 0
    if isinstance(rc, int):
        return rc
    print(rc, file=sys.stderr)
    return 1


def run_forked(cmd: Command, logfile: Path, timeout: float, cwd: Path) -> Outcome:
    """``cmd`` in a fork of this process (no interpreter start-up or imports to pay again; CPU only)."""
    sys.stdout.flush()
    sys.stderr.flush()
    t0, cpu0 = time.perf_counter(), _children_cpu()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 1
        try:
            os.setpgid(0, 0)
            fd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            # the parent's sys.stdout may not write to fd 1 (e.g. under pytest's capture)
            sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
            sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
            logging.getLogger().handlers.clear()
            os.chdir(cwd)
            env = child_env(cmd.env)
            os.environ.clear()
            os.environ.update(env)
            if env.get("OMP_NUM_THREADS") and "torch" in sys.modules:  # imported before the fork: set it directly
                sys.modules["torch"].set_num_threads(int(env["OMP_NUM_THREADS"]))
            code = _call_main(cmd)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):
        pass  # the child did it already
    end = time.monotonic() + max(1.0, timeout)
    timed_out, status = False, 0
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > end:
                timed_out = True
                _kill_group(pid)
                try:
                    _, status = os.waitpid(pid, 0)
                except ChildProcessError:
                    status = 0
                break
            time.sleep(0.05)
    except BaseException:  # Ctrl-C reaches only this process (the child has its own process group)
        _kill_group(pid)
        raise
    rc = -signal.SIGKILL if timed_out else os.waitstatus_to_exitcode(status)  # killed by us (status may be reaped)
    return Outcome(rc, time.perf_counter() - t0, timed_out, _read_tail(logfile), _children_cpu() - cpu0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- context


@dataclass
class Ctx:
    device: str  # "cpu" or "cuda"
    smoke: bool
    work: Path
    sizes: Sizes
    gpus: int = 0
    gpu_name: str = ""
    bf16: bool = False  # native bf16 on this GPU
    child_env: dict[str, str] = field(default_factory=dict)  # added to every child's environment

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def data(self) -> Path:
        return self.work / "market1501"

    @property
    def mini(self) -> Path:
        return self.work / "mini"

    @property
    def cache(self) -> Path:
        return self.work / "parsing.h5"

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    @property
    def figure(self) -> str:
        """Verdict of throughput rows that are not comparable with the GPU targets ('' when they are)."""
        if self.smoke:
            return "smoke sizes, not judged" if self.cuda else "cpu, not judged"
        return "" if self.cuda else "cpu, not judged"


def make_mini(src: Path, dst: Path) -> None:
    """A Market layout with the first image of each split (and its parsing PNG): the CPU smoke of the
    detector and the parser, whose random-weight models cost seconds per image on a CPU."""
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        first = sorted(p for p in (src / folder).glob("*.jpg") if not p.name.startswith("-1"))[0]
        for a, b in ((first, dst / folder / first.name),
                     (src / "parsing" / folder / (first.stem + ".png"), dst / "parsing" / folder / (first.stem + ".png"))):
            b.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(a, b)


def split_counts(root: Path) -> dict[str, int]:
    from reid_masks.datasets import build_dataset, cache_splits

    ds = build_dataset("market1501", root)
    return {s: len(ds.split(s)) for s in cache_splits(ds)}  # generate's row order, gt_bbox/ included


# --------------------------------------------------------------------------- smoke rows (real CLIs)


def sets(pairs: dict[str, Any]) -> list[str]:
    return [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]


RECIPES = {"baseline": "baseline_market1501", "mmga": "mmga_market1501", "mgran": "mgran_market1501",
           "fsa_mask": "fsa_mask_market1501"}


def fsa_size(s: Sizes) -> tuple[int, int]:
    """FSA's input: the paper's 256x128 (its attention is sized for it), or the smoke size."""
    return (s.height, s.width) if s.height < 256 else (256, 128)


def fit_sets(ctx: Ctx, model: str, amp: str, out: Path, epochs: int) -> list[str]:
    s = ctx.sizes
    pairs: dict[str, Any] = {
        "data.root": ctx.data, "data.height": s.height, "data.width": s.width, "data.num_ids": s.p,
        "data.num_instances": s.k, "data.num_workers": s.data_workers, "model.backbone": s.backbone,
        "model.pretrained": "none", "solver.epochs": epochs, "solver.backbone_lr": 0.0025,
        "train.device": ctx.device, "train.amp": amp, "train.channels_last": "true", "train.output_dir": out,
        "train.eval_period": 0, "train.log_period": 1, "train.tensorboard": "false", "test.batch_size": s.test_batch,
    }
    if model != "baseline":  # the baseline reads no masks
        pairs["data.cache"] = ctx.cache
    if model.startswith("fsa"):  # a Bottleneck backbone (its config's resnet50_ibn_a) at 256x128 or the smoke size
        del pairs["model.backbone"]
        pairs["data.height"], pairs["data.width"] = fsa_size(s)
    if model != "mgran":  # MGRAN has no head parameters (no solver.lr group): the config loader refuses the key
        pairs["solver.lr"] = 0.005
    return ["--config", RECIPES[model], *sets(pairs)]


def generate_argv(ctx: Ctx, root: Path, out: Path, *source: str) -> list[str]:
    s = ctx.sizes
    return ["generate", "--dataset", "market1501", "--root", str(root), "--out", str(out), *source,
            "--device", ctx.device, "--batch-size", str(s.gen_batch), "--workers", str(s.gen_workers)]


def shard_rows(counts: dict[str, int], shard: Optional[tuple[int, int]], chunk_rows: int = 1) -> dict[str, list[int]]:
    """Row positions per split that ``--shard i/n --chunk-rows c`` computes: chunks i, i+n, ... of the
    train, query, gallery (, multi_query) row sequence (every row without a shard)."""
    out: dict[str, list[int]] = {}
    k = 0
    for split, n in counts.items():
        out[split] = [j for j in range(n) if shard is None or ((k + j) // chunk_rows) % shard[1] == shard[0]]
        k += n
    return out


def check_cache(path: Path, root: Path, shard: Optional[tuple[int, int]] = None) -> str:
    """The cache has a row for every image (of its shard) of the dataset; returns the status counts."""
    from reid_masks.cache import STATUS_NAMES, MaskCache

    counts = split_counts(root)
    want = shard_rows(counts, shard)
    with MaskCache(path) as cache:
        total = {s: cache.num_rows(s) for s in cache.splits}
        got = {s: sorted(cache.row_index(s).tolist()) for s in cache.splits}
        if total != counts or {s: got.get(s, []) for s in want} != want:
            raise AssertionError(f"{path}: rows {got} of {total}, expected {want} of {counts}")
        statuses: dict[str, int] = {}
        for s in cache.splits:
            for code in cache.column(s, "status").tolist():
                statuses[STATUS_NAMES[int(code)]] = statuses.get(STATUS_NAMES[int(code)], 0) + 1
    n = sum(len(v) for v in want.values())
    where = f" (shard {shard[0]}/{shard[1]} of {sum(counts.values())})" if shard else ""
    return f"{n} rows{where}: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}"


def detector_out(ctx: Ctx, stem: str) -> Path:
    """The cache the detector/parser rows write (a shard file under ``detector_shard``)."""
    sh = ctx.sizes.detector_shard
    return ctx.work / (f"{stem}.shard{sh[0]}of{sh[1]}.h5" if sh else f"{stem}.h5")


def check_fit(out: Path, epochs: int) -> str:
    from reid_train.engine.trainer import load_checkpoint

    ckpt = load_checkpoint(out / "checkpoint.pth")
    if int(ckpt["epoch"]) != epochs:
        raise AssertionError(f"{out}/checkpoint.pth is at epoch {ckpt['epoch']}, expected {epochs}")
    res = json.loads((out / "evaluation.json").read_text())
    if not (0.0 <= res["rank1"] <= 1.0 and 0.0 <= res["mAP"] <= 1.0):
        raise AssertionError(f"{out}/evaluation.json: rank-1 {res['rank1']}, mAP {res['mAP']} outside [0, 1]")
    return f"epoch {epochs}, rank-1 {100 * res['rank1']:.1f}%, mAP {100 * res['mAP']:.1f}% (random init)"


@dataclass
class Job:
    """One check: a command (smoke) or a throughput job (several rows), run in a child process."""

    name: str
    rows: list[tuple[str, str]]  # (row id, what)
    command: Callable[[Ctx], Any]  # -> Command, or a status string when it does not apply here
    verify: Optional[Callable[[Ctx, str], str]] = None  # (ctx, output) -> detail; raises when wrong
    needs: tuple[str, ...] = ()
    min_s: float = 10.0  # not started with less budget left than this
    cap_s: float = 180.0  # timeout
    late: bool = False  # run after the others (shown in its place): what to lose first when time runs short


def smoke_jobs() -> list[Job]:
    jobs: list[Job] = []

    def gen_root(ctx: Ctx) -> Path:
        return ctx.mini if ctx.sizes.detector_set == "mini" else ctx.data

    def shard(ctx: Ctx) -> list[str]:
        sh = ctx.sizes.detector_shard
        return ["--shard", f"{sh[0]}/{sh[1]}", "--chunk-rows", "1"] if sh else []

    def gen_torchvision(ctx: Ctx) -> Command:
        score = [] if ctx.sizes.score_threshold is None else ["--score-threshold", str(ctx.sizes.score_threshold)]
        return Command("reid_masks.cli", generate_argv(ctx, gen_root(ctx), ctx.work / "torchvision.h5", "--backend", "torchvision",
                                                       "--random-weights", "--min-size", str(ctx.sizes.min_size), *score, *shard(ctx)))

    def gen_schp(ctx: Ctx) -> Command:
        return Command("reid_masks.cli", generate_argv(ctx, gen_root(ctx), ctx.work / "schp.h5", "--parser", "schp",
                                                       "--backend", "none", "--random-weights", *shard(ctx)))

    def verify_detector(stem: str) -> Callable[[Ctx, str], str]:
        return lambda ctx, _: check_cache(detector_out(ctx, stem), gen_root(ctx), ctx.sizes.detector_shard)

    def gen_parsing(ctx: Ctx) -> Command:
        return Command("reid_masks.cli", generate_argv(ctx, ctx.data, ctx.cache, "--parsing-dir", str(ctx.data / "parsing")))

    jobs += [
        Job("generate/torchvision", [("generate/torchvision", "generate: torchvision Mask R-CNN + Keypoint R-CNN, random weights")],
            gen_torchvision, verify_detector("torchvision"), min_s=20),
        Job("generate/schp", [("generate/schp", "generate: SCHP parser, random weights")],
            gen_schp, verify_detector("schp"), min_s=20),
        Job("generate/parsing", [("generate/parsing", "generate: parsing PNGs (the cache the fits train on)")],
            gen_parsing, lambda ctx, _: check_cache(ctx.cache, ctx.data), min_s=8),
    ]

    def fit_job(model: str, amp: str) -> Job:
        name = f"fit/{model}/{amp}"

        def command(ctx: Ctx) -> Any:
            if not ctx.cuda and amp == "fp16":
                return NA_CPU
            if ctx.cuda and amp == "bf16" and not ctx.bf16:
                return f"n/a: no native bf16 on {ctx.gpu_name}"
            return Command("reid_train.cli", ["fit", *fit_sets(ctx, model, amp, ctx.run_dir(f"{model}_{amp}"), ctx.sizes.epochs)])

        def verify(ctx: Ctx, _: str) -> str:
            detail = check_fit(ctx.run_dir(f"{model}_{amp}"), ctx.sizes.epochs)
            return detail + ("" if ctx.cuda else "; cpu: amp and channels_last are CUDA-only, the trainer ran float32")

        what = f"fit {model}, amp {amp}, channels_last" + (", GradScaler" if amp == "fp16" else "")
        return Job(name, [(name, what)], command, verify, needs=("generate/parsing",), min_s=12, late=amp == "fp16")

    jobs += [fit_job(m, a) for a in ("bf16", "fp16") for m in ("baseline", "mmga", "mgran", "fsa_mask")]

    def resume(ctx: Ctx) -> Command:
        argv = ["fit", "--resume", *fit_sets(ctx, "mmga", "bf16", ctx.run_dir("mmga_bf16"), ctx.sizes.epochs + 1)]
        return Command("reid_train.cli", argv)

    def evaluate(ctx: Ctx) -> Command:
        return Command("reid_train.cli", ["evaluate", "--checkpoint", str(ctx.run_dir("mmga_bf16") / "checkpoint.pth"),
                                          "--out", str(ctx.work / "evaluate.json"), *sets({"test.flip": "true", "test.rerank": "true"})])

    def verify_evaluate(ctx: Ctx, _: str) -> str:
        res = json.loads((ctx.work / "evaluate.json").read_text())
        if res.get("flip") is not True or res.get("rerank") is not True:
            raise AssertionError(f"evaluate.json: flip={res.get('flip')}, rerank={res.get('rerank')}, expected both true")
        if not (0.0 <= res["rank1"] <= 1.0 and 0.0 <= res["mAP"] <= 1.0):
            raise AssertionError(f"evaluate.json: rank-1 {res['rank1']}, mAP {res['mAP']} outside [0, 1]")
        return f"{res['num_query']} x {res['num_gallery']}: rank-1 {100 * res['rank1']:.1f}%, mAP {100 * res['mAP']:.1f}%"

    def extract(ctx: Ctx) -> Command:
        return Command("reid_train.cli", ["extract", "--checkpoint", str(ctx.run_dir("mmga_bf16") / "checkpoint.pth"),
                                          "--split", "query", "--out", str(ctx.work / "query.npz")])

    def verify_extract(ctx: Ctx, _: str) -> str:
        import numpy as np

        with np.load(ctx.work / "query.npz") as z:
            feats = z["features"]
        n = split_counts(ctx.data)["query"]
        norms = np.linalg.norm(feats.astype(np.float64), axis=1)
        if feats.shape[0] != n or not np.isfinite(feats).all() or np.abs(norms - 1).max() > 1e-3:
            raise AssertionError(f"query.npz: features {feats.shape} (want {n} rows), norms {norms.min():.4f}..{norms.max():.4f}")
        return f"{feats.shape[0]} x {feats.shape[1]} features, unit norm"

    def export(fmt: str) -> Callable[[Ctx], Command]:
        def command(ctx: Ctx) -> Command:
            return Command("reid_train.cli", ["export", "--checkpoint", str(ctx.run_dir("mmga_bf16") / "checkpoint.pth"),
                                              "--format", fmt, "--out", str(ctx.work / f"mmga.{fmt}")])
        return command

    def verify_export(fmt: str) -> Callable[[Ctx, str], str]:
        def verify(ctx: Ctx, _: str) -> str:
            from reid_train.export import read_export_metadata

            meta = read_export_metadata(ctx.work / f"mmga.{fmt}")
            diffs = (meta.get("parity") or {}).get("max_abs_diff")
            if not diffs:
                raise AssertionError(f"mmga.{fmt}: no parity result in its metadata")
            where = "CUDA" if ctx.cuda else "CPU"
            return f"from a {where} checkpoint; parity vs PyTorch: max abs diff {max(diffs.values()):.1e}"
        return verify

    def torchrun_fit(ctx: Ctx) -> Command:
        n = max(1, min(2, ctx.gpus)) if ctx.cuda else 1
        launch = ["--nnodes", "1", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                  "-m", "reid_train.cli"]
        argv = ["fit", *fit_sets(ctx, "mmga", "bf16", ctx.run_dir("torchrun"), 1)]
        return Command("torch.distributed.run", launch + argv, env={"OMP_NUM_THREADS": "1"} if not ctx.cuda else {})

    def verify_torchrun(ctx: Ctx, _: str) -> str:
        n = max(1, min(2, ctx.gpus)) if ctx.cuda else 1
        detail = check_fit(ctx.run_dir("torchrun"), 1)
        if n == 1:
            return f"{detail}; 1 process: the trainer makes no process group at world size 1 (ddp/probe runs one)"
        return f"{detail}; {n} processes, {'nccl' if ctx.cuda else 'gloo'}"

    def probe(ctx: Ctx) -> Command:
        n = max(1, min(2, ctx.gpus)) if ctx.cuda else 1
        launch = ["--nnodes", "1", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                  str(Path(__file__).resolve()), "--ddp-probe", "--device", ctx.device]
        return Command("torch.distributed.run", launch, env={"OMP_NUM_THREADS": "1"} if not ctx.cuda else {})

    def verify_probe(ctx: Ctx, output: str) -> str:
        lines = [ln for ln in output.splitlines() if ln.startswith(DDP_PROBE_TAG)]
        if not lines:
            raise AssertionError("the DDP probe printed no result")
        res = json.loads(lines[-1][len(DDP_PROBE_TAG):])
        if not res["same_weights"]:
            raise AssertionError(f"ranks' weights differ after DDP steps: {res}")
        return (f"{res['backend']}, world size {res['world_size']}, DistributedDataParallel, {res['steps']} steps "
                f"({res['amp']}), weights identical on every rank")

    mm = ("fit/mmga/bf16",)
    jobs += [
        Job("fit/resume", [("fit/resume", "fit --resume: the MMGA bf16 run, one more epoch")], resume,
            lambda ctx, _: check_fit(ctx.run_dir("mmga_bf16"), ctx.sizes.epochs + 1), needs=mm),
        Job("evaluate", [("evaluate", "evaluate: flip + k-reciprocal re-ranking")], evaluate, verify_evaluate, needs=mm),
        Job("extract", [("extract", "extract: query features (.npz)")], extract, verify_extract, needs=mm, min_s=8),
        Job("export/onnx", [("export/onnx", "export ONNX + onnxruntime parity")], export("onnx"), verify_export("onnx"), needs=mm),
        Job("export/torchscript", [("export/torchscript", "export TorchScript + parity")], export("torchscript"),
            verify_export("torchscript"), needs=mm),
        Job("ddp/torchrun-fit", [("ddp/torchrun-fit", "torchrun ... reid-train fit (MMGA bf16)")], torchrun_fit, verify_torchrun,
            needs=("generate/parsing",), min_s=15),
        Job("ddp/probe", [("ddp/probe", "torchrun: DistributedDataParallel step (nccl on cuda, gloo on cpu)")], probe, verify_probe,
            min_s=12),
    ]
    return jobs


# --------------------------------------------------------------------------- throughput rows (child jobs)

SPEED_ROWS = {
    "generate": [
        ("speed/generate-batched-vs-loop", "mask stage models: batched predict vs per-image loop, same weights"),
        ("speed/generate-e2e", "generate end to end (decode, both models, derive, write), synthetic Market 128x64"),
    ],
    "schp": [
        ("speed/schp-b1", "SCHP parser, batch 1 (flip test, 473x473)"),
        ("speed/schp-best", "SCHP parser, best batch"),
    ],
    "train": [
        ("speed/train-baseline", "training step, baseline, 384x128, P x K = 24 x 4, bf16 + channels_last"),
        ("speed/train-mmga", "training step, MMGA, 384x128, P x K = 24 x 4, bf16 + channels_last"),
        ("speed/mmga-overhead", "MMGA's attention overhead over the baseline"),
        ("speed/train-mgran", "training step, MGRAN (4 CNN inputs per crop), same batch"),
        ("speed/train-fsa", "training step, FSA (ResNet50-IBN-a + MHSA + ECA + fusion), 256x128, P x K = 16 x 4, bf16 + channels_last"),
    ],
    "eval": [
        ("speed/eval-msmt", "evaluation, MSMT17 size 11,659 x 82,161: distance + CMC/mAP"),
    ],
}
SPEED_MIN_S = {"generate": 45.0, "schp": 20.0, "train": 45.0, "eval": 15.0}
SPEED_CAP_S = {"generate": 200.0, "schp": 120.0, "train": 200.0, "eval": 150.0}


def speed_jobs() -> list[Job]:
    def command(name: str) -> Callable[[Ctx], Command]:
        def make(ctx: Ctx) -> Command:
            argv = ["--speed-job", name, "--device", ctx.device, "--workdir", str(ctx.work)] + (["--smoke"] if ctx.smoke else [])
            return Command(SELF, argv)
        return make

    return [Job(f"speed/{name}", rows, command(name), min_s=SPEED_MIN_S[name], cap_s=SPEED_CAP_S[name])
            for name, rows in SPEED_ROWS.items()]


class Emitter:
    """Rows of a throughput job, written to its result file after each one (a crash keeps the finished rows)."""

    def __init__(self, path: Path, job: str, ctx: Ctx) -> None:
        self.path, self.ctx = path, ctx
        self.rows = {rid: Row(rid, what) for rid, what in SPEED_ROWS[job]}

    def put(self, rid: str, **values: Any) -> Row:
        row = self.rows[rid]
        for k, v in values.items():
            setattr(row, k, v)
        row.status = values.get("status", NOT_JUDGED if self.ctx.figure else PASS)
        from reid_masks.fileio import write_json_atomic

        write_json_atomic(self.path, [dataclasses.asdict(r) for r in self.rows.values() if r.status != "not run"])
        log.info("%s: %s %s %s %s", rid, row.status, fmt_value(row.value), row.unit, row.detail)
        return row

    def fail(self, rid: str, exc: BaseException) -> None:
        self.put(rid, status=FAIL, error="".join(traceback.format_exception(exc))[-4000:], detail=f"{type(exc).__name__}: {exc}"[:300])

    def target(self, rid: str, value: float, unit: str, op: str, bound: float, detail: str, seconds: float) -> None:
        self.put(rid, value=value, unit=unit, target=f"{op} {fmt_value(bound)} {unit}".strip(),
                 verdict=target_verdict(value, op, bound, self.ctx.figure), detail=detail, seconds=seconds)


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def speed_generate(ctx: Ctx, em: Emitter) -> None:
    import torch

    from bench_generate import PARTS, PartTimer, backend_options, make_crops, time_batched, time_naive
    from reid_masks.backends.torchvision_backend import TorchvisionBackend
    from reid_masks.generate import GenerateConfig, generate

    s = ctx.sizes
    if ctx.cuda:
        torch.zeros(1, device=ctx.device)  # CUDA context first, so the model build time below is the build alone
    opts = backend_options(ctx.device, s.speed_min_size, dets=s.speed_dets, proposals=s.speed_proposals)
    rid = "speed/generate-batched-vs-loop"
    t_build = float("nan")
    batched_ips = float("nan")
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        tb = time.perf_counter()
        backend = TorchvisionBackend(**opts)
        _sync(ctx.device)
        t_build = time.perf_counter() - tb
        crops = make_crops(max(s.speed_loop_images, s.speed_batched_images, 2))
        backend.predict(crops[:2])  # warm-up: allocator, lazy init, kernels
        loop_s, _ = time_naive(backend, crops[: s.speed_loop_images])
        timer = PartTimer([m for m in (backend.mask_model, backend.keypoint_model) if m is not None], backend.device)
        timer.enabled = True
        batch_s, _, found = time_batched(backend, crops[: s.speed_batched_images], s.speed_batch)
        timer.enabled = False
        timer.remove()
        totals = dict(timer.totals)
        del timer  # it holds the models
        loop_ips, batched_ips = s.speed_loop_images / loop_s, s.speed_batched_images / batch_s
        parts = ", ".join(f"{p} {100 * totals.get(p, 0.0) / batch_s:.0f}%" for p in PARTS)
        em.target(rid, batched_ips / loop_ips, "x", ">=", TARGET_BATCHED_VS_LOOP,
                  f"batch {s.speed_batch}: {batched_ips:.1f} img/s, per-image loop: {loop_ips:.1f} img/s (models only, "
                  f"min_size {s.speed_min_size}, {opts['rpn_post_nms_top_n']} proposals, {found / s.speed_batched_images:.1f} "
                  f"persons/crop); batched time: {parts}; model build {t_build:.1f} s", time.perf_counter() - t0)
        del backend
    except Exception as exc:  # noqa: BLE001 - recorded in the row, the next row runs
        em.fail(rid, exc)
    _free_gpu()

    rid = "speed/generate-e2e"
    t0 = time.perf_counter()
    try:
        if s.e2e_ids:
            from reid_masks.synth.layouts import synthesize

            root = ctx.work / "e2e_market1501"
            if not root.is_dir():
                synthesize("market1501", root, ids=s.e2e_ids, seed=1, workers=max(1, min(16, os.cpu_count() or 1)))
        else:
            root = ctx.mini
        n = sum(split_counts(root).values())
        if not math.isfinite(t_build):
            tb = time.perf_counter()
            TorchvisionBackend(**opts)
            t_build = time.perf_counter() - tb
        workers = max(0, min(8, (os.cpu_count() or 1) - 2)) if ctx.cuda else 0
        common = dict(dataset="market1501", root=root, batch_size=s.speed_batch, workers=workers)
        for name in ("e2e_torchvision.h5", "e2e_parsing.h5"):  # a cache that exists would be reused, not timed
            (ctx.work / name).unlink(missing_ok=True)
        t = time.perf_counter()
        generate(GenerateConfig(out=ctx.work / "e2e_torchvision.h5", backend="torchvision", backend_options=opts, **common))
        _sync(ctx.device)
        t_e2e = time.perf_counter() - t - t_build
        if t_e2e <= 0:
            raise RuntimeError(f"generate took {t_e2e + t_build:.2f} s, less than the model build alone ({t_build:.2f} s)")
        t = time.perf_counter()
        generate(GenerateConfig(out=ctx.work / "e2e_parsing.h5", parsing_dir=root / "parsing", backend="none", **common))
        t_io = time.perf_counter() - t
        ips = n / t_e2e
        stages = {"detector": n / batched_ips if math.isfinite(batched_ips) else 0.0,
                  "decode+derive+write": t_io}
        bound, shares = bounding_stage(t_e2e, stages)
        em.target(rid, ips, "img/s", ">=", TARGET_GENERATE_IPS,
                  f"{n} images, batch {s.speed_batch}, {workers} decode workers, model build ({t_build:.1f} s) excluded; "
                  f"bound by: {bound} (time alone / end to end: detector models {100 * shares['detector']:.0f}%, "
                  f"decode + derive + write without models {100 * shares['decode+derive+write']:.0f}%)",
                  time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001
        em.fail(rid, exc)


def speed_schp(ctx: Ctx, em: Emitter) -> None:
    import numpy as np
    import torch

    from bench_parser import run_batch
    from reid_masks.parsing.schp import SCHPParser

    s = ctx.sizes
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        parser = SCHPParser(random_weights=True, device=ctx.device, input_size=(s.schp_input, s.schp_input))
    except Exception as exc:  # noqa: BLE001
        for rid, _ in SPEED_ROWS["schp"]:
            em.fail(rid, exc)
        return
    rng = np.random.default_rng(0)
    rates: dict[int, float] = {}
    notes: list[str] = []
    for bs in s.schp_batches:
        try:
            parser.batch_size = bs
            images = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8) for _ in range(bs)]
            if ctx.cuda or bs == s.schp_batches[0]:  # warm-up: allocator, kernels per shape (as bench_parser)
                run_batch(parser, images, parser.device)
            times = np.array([run_batch(parser, images, parser.device) for _ in range(s.schp_timed)])
            rates[bs] = bs * s.schp_timed / times.sum()
            if bs == 1:
                per = times.sum(0) / s.schp_timed
                em.put("speed/schp-b1", value=rates[1], unit="img/s", seconds=time.perf_counter() - t0,
                       verdict=ctx.figure or "measured",
                       detail=f"input {s.schp_input}x{s.schp_input}, flip test {'on' if parser.flip else 'off'}, fp32; "
                              f"s/image: prep {per[0]:.4f}, net {per[1]:.4f}, back {per[2]:.4f}")
        except torch.cuda.OutOfMemoryError:
            notes.append(f"batch {bs}: out of GPU memory")
            _free_gpu()
        except Exception as exc:  # noqa: BLE001
            if bs == 1:
                em.fail("speed/schp-b1", exc)
            notes.append(f"batch {bs}: {type(exc).__name__}: {exc}"[:200])
    if not rates:
        em.fail("speed/schp-best", RuntimeError("; ".join(notes) or "no batch size ran"))
        return
    best = max(rates, key=rates.get)
    em.put("speed/schp-best", value=rates[best], unit="img/s", seconds=time.perf_counter() - t0, verdict=ctx.figure or "measured",
           detail=f"best batch {best}; " + ", ".join(f"batch {b}: {r:.1f}" for b, r in rates.items()) + "".join(f"; {n}" for n in notes))


def speed_train(ctx: Ctx, em: Emitter) -> None:
    import torch

    import bench_mgran
    import bench_train

    s = ctx.sizes
    amp = "bf16" if ctx.cuda else "none"
    base = ["--device", ctx.device, "--batch-size", str(s.train_batch)]
    t0 = time.perf_counter()
    rates: dict[str, dict[str, Any]] = {}
    try:
        targs = bench_train.parse_args(base + ["--backbone", s.train_backbone, "--amp", amp, "--height", str(s.train_height),
                                               "--width", str(s.train_width),
                                               "--channels-last" if ctx.cuda else "--no-channels-last",
                                               "--models", "baseline,mmga", "--warmup", str(s.train_warmup), "--iters",
                                               str(s.train_iters), "--repeats", str(s.train_repeats), "--skip-loader"])
        rates = {r["model"]: r for r in bench_train.bench_models(targs, torch.device(ctx.device))}
    except Exception as exc:  # noqa: BLE001
        for rid in ("speed/train-baseline", "speed/train-mmga", "speed/mmga-overhead"):
            em.fail(rid, exc)
    where = f"{s.train_backbone} {s.train_height}x{s.train_width}, batch {s.train_batch}, " + (
        "bf16 + channels_last" if ctx.cuda else "float32 (amp/channels_last are CUDA-only)")

    def peak(r: dict[str, Any]) -> str:
        return f"; peak GPU {r['peak_gib']:.1f} GiB" if r.get("peak_gib") else ""

    if rates:
        took = time.perf_counter() - t0
        b, m = rates["baseline"], rates["mmga"]
        em.put("speed/train-baseline", value=b["best_ips"], unit="img/s", seconds=took, verdict=ctx.figure or "measured",
               detail=f"{where}; median {b['median_ips']:.1f} img/s{peak(b)}")
        em.target("speed/train-mmga", m["best_ips"], "img/s", ">=", TARGET_MMGA_IPS,
                  f"{where}; median {m['median_ips']:.1f} img/s{peak(m)}", took)
        em.target("speed/mmga-overhead", overhead_pct(b["best_ips"], m["best_ips"]), "%", "<=", TARGET_OVERHEAD_PCT,
                  f"time per image, MMGA over the baseline (interleaved rounds, best of {s.train_repeats})", took)
    _free_gpu()
    t1 = time.perf_counter()
    try:
        margs = bench_mgran.parse_args(base + ["--backbones", s.train_backbone, "--sizes", f"{s.train_height}x{s.train_width}",
                                               "--models", "mgran", "--amp", amp, "--warmup", str(s.train_warmup), "--iters",
                                               str(s.mgran_iters), "--rounds", str(s.mgran_rounds), "--no-write"]
                                       + (["--channels-last"] if ctx.cuda else []))
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats()
        (g,) = bench_mgran.bench(margs, torch.device(ctx.device))
        ratio = f"; MGRAN / MMGA {g['img_s'] / rates['mmga']['best_ips']:.2f}" if "mmga" in rates else ""
        gpu = f"; peak GPU {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if ctx.cuda else ""
        em.put("speed/train-mgran", value=g["img_s"], unit="img/s", seconds=time.perf_counter() - t1, verdict=ctx.figure or "measured",
               detail=f"{where}, last stride {g['last_stride']}, {g['cnn_images']} CNN inputs/step{ratio}{gpu}")
    except Exception as exc:  # noqa: BLE001
        em.fail("speed/train-mgran", exc)
    _free_gpu()
    t2 = time.perf_counter()
    try:
        h, w = fsa_size(s)
        fargs = bench_train.parse_args(["--device", ctx.device, "--batch-size", str(min(s.train_batch, 64)),
                                        "--backbone", "resnet50_ibn_a", "--amp", amp, "--height", str(h), "--width", str(w),
                                        "--channels-last" if ctx.cuda else "--no-channels-last", "--models", "fsa",
                                        "--warmup", str(s.train_warmup), "--iters", str(s.train_iters), "--repeats",
                                        str(s.train_repeats), "--skip-loader"])
        (f,) = bench_train.bench_models(fargs, torch.device(ctx.device))
        em.target("speed/train-fsa", f["best_ips"], "img/s", ">=", TARGET_FSA_IPS,
                  f"resnet50_ibn_a {h}x{w}, batch {fargs.batch_size}, " + ("bf16 + channels_last" if ctx.cuda else
                  "float32 (amp/channels_last are CUDA-only)") + f"; median {f['median_ips']:.1f} img/s{peak(f)}",
                  time.perf_counter() - t2)
    except Exception as exc:  # noqa: BLE001
        em.fail("speed/train-fsa", exc)


def speed_eval(ctx: Ctx, em: Emitter) -> None:
    import numpy as np
    import torch

    from bench_eval import make_ids, measure
    from reid_train.evaluation import evaluate_from_features

    s = ctx.sizes
    t0 = time.perf_counter()
    try:
        rng = np.random.default_rng(0)
        ids = make_ids(rng, s.eval_q, s.eval_g, s.eval_ids, 15, 0)
        gen = torch.Generator(device=ctx.device).manual_seed(1)
        qf = torch.randn(s.eval_q, s.eval_dim, device=ctx.device, generator=gen)
        gf = torch.randn(s.eval_g, s.eval_dim, device=ctx.device, generator=gen)
        m = measure(lambda: evaluate_from_features(qf, gf, *ids), ctx.device)
        cmc, m_ap = m["result"]
        gpu = f"peak GPU +{m['extra_gpu'] / 2**30:.2f} GiB over the features, " if ctx.cuda else ""
        exact = "" if m["peak_exact"] else " (lifetime peak)"
        em.put("speed/eval-msmt", value=m["seconds"], unit="s", seconds=time.perf_counter() - t0, verdict=ctx.figure or "measured",
               detail=f"{s.eval_q} x {s.eval_g}, {s.eval_dim}-d features on {ctx.device}, euclidean, blocked "
                      f"(evaluate_from_features); {gpu}host peak RSS {m['peak_rss'] / 2**30:.2f} GiB{exact} "
                      f"(+{m['extra_rss'] / 2**20:.0f} MiB in the call); rank-1 {100 * cmc[0]:.1f}%, mAP {100 * m_ap:.1f}% (random)")
    except Exception as exc:  # noqa: BLE001
        em.fail("speed/eval-msmt", exc)


SPEED_FUNCS: dict[str, Callable[[Ctx, Emitter], None]] = {
    "generate": speed_generate, "schp": speed_schp, "train": speed_train, "eval": speed_eval}


def run_speed_job(name: str, ctx: Ctx, result: Path) -> int:
    em = Emitter(result, name, ctx)
    SPEED_FUNCS[name](ctx, em)
    return 0 if all(succeeded(r.status) for r in em.rows.values()) else 1


# --------------------------------------------------------------------------- DDP probe (under torchrun)


def ddp_probe(device_type: str) -> int:
    """One DistributedDataParallel MMGA step per rank with the trainer's train_step; checks the ranks agree."""
    import torch
    import torch.distributed as dist

    from bench_train import synthetic_batch
    from reid_train.config import Config
    from reid_train.engine.distributed import weight_checksums
    from reid_train.engine.trainer import build_optimizer, train_step
    from reid_train.losses import MMGALoss
    from reid_train.models import build_model

    cuda = device_type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
        model = build_model("mmga", 8, backbone="resnet18", pretrained=None).to(device)
        if cuda:
            model.to(memory_format=torch.channels_last)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else None
        optimizer = build_optimizer(model, Config())
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        criterion = MMGALoss("mmga")
        batch = synthetic_batch(8, 8, 128 if cuda else 64, 64 if cuda else 32, seed=rank)  # each rank its own data
        images = batch["image"].to(device, non_blocking=True)
        if cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        losses = []
        for _ in range(2):
            terms = train_step(net, criterion, optimizer, scaler, images, batch["pid"].to(device), batch["masks"].to(device), amp,
                               where=f"ddp probe rank {rank}: ")
            losses.append(round(terms["total"], 4))
        if cuda:
            torch.cuda.synchronize(device)
        sums = [None] * world
        dist.all_gather_object(sums, weight_checksums(model)["params_sha256"])
        if rank == 0:
            print(DDP_PROBE_TAG + json.dumps({"backend": backend, "world_size": world, "steps": len(losses), "losses": losses,
                                              "amp": "bf16" if amp is not None else "float32",
                                              "same_weights": len(set(sums)) == 1}), flush=True)
    finally:
        dist.destroy_process_group()
    return 0


# --------------------------------------------------------------------------- driver


def select(jobs: list[Job], only: Optional[str]) -> set[str]:
    """Names of the jobs to run for ``--only`` (prefixes of job or row ids), with what they need."""
    if not only:
        return {j.name for j in jobs}
    prefixes = [p.strip() for p in only.split(",") if p.strip()]
    by_name = {j.name: j for j in jobs}
    chosen = {j.name for j in jobs if any(j.name.startswith(p) or any(r.startswith(p) for r, _ in j.rows) for p in prefixes)}
    todo = list(chosen)
    while todo:
        for need in by_name[todo.pop()].needs:
            if need not in chosen:
                chosen.add(need)
                todo.append(need)
    return chosen


def run_jobs(ctx: Ctx, jobs: list[Job], chosen: set[str], deadline: float,
             runner: Callable[[Command, Path, float, Path], Outcome], rows: dict[str, Row]) -> None:
    """Every job in order, isolated, filling ``rows`` (row id -> Row, every row of every job)."""
    state: dict[str, str] = {}
    logs = ctx.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    order = [j for j in jobs if not j.late] + [j for j in jobs if j.late]
    for i, job in enumerate(order):
        mine = [rows[rid] for rid, _ in job.rows]

        def mark(status: str, detail: str = "", error: str = "", seconds: Optional[float] = None) -> None:
            for r in mine:
                if r.status == "not run":
                    r.status, r.detail, r.error, r.seconds = status, r.detail or detail, r.error or error, r.seconds or seconds
            state[job.name] = status

        if job.name not in chosen:
            mark("not selected")
            continue
        failed = [n for n in job.needs if not succeeded(state.get(n, ""))]
        if failed:
            mark(f"skipped: needs {', '.join(failed)}")
            continue
        remaining = deadline - time.monotonic()
        if remaining < job.min_s:
            mark(SKIP_BUDGET, f"{remaining:.0f} s left, needs about {job.min_s:.0f} s")
            continue
        try:
            cmd = job.command(ctx)
        except Exception as exc:  # noqa: BLE001
            mark(FAIL, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            continue
        if isinstance(cmd, str):  # does not apply on this machine
            mark(cmd)
            log.info("[%d/%d] %s: %s", i + 1, len(jobs), job.name, cmd)
            continue
        cmd.env = {**ctx.child_env, **cmd.env}
        timeout = min(job.cap_s, remaining)
        logfile = logs / (job.name.replace("/", "_") + ".log")
        result = ctx.work / "results" / (job.name.replace("/", "_") + ".json")
        if cmd.module == SELF and "--speed-job" in cmd.argv:
            result.parent.mkdir(parents=True, exist_ok=True)
            result.unlink(missing_ok=True)
            cmd.argv += ["--result", str(result)]
        log.info("[%d/%d] %s: %s", i + 1, len(jobs), job.name, cmd.display())
        out = runner(cmd, logfile, timeout, ctx.work)
        if result.is_file():
            for d in json.loads(result.read_text()):
                rows[d["id"]] = Row(**d)
            mine = [rows[rid] for rid, _ in job.rows]
        if out.timed_out:
            why = "the time budget" if timeout < job.cap_s else f"its {job.cap_s:.0f} s limit"
            mark(TIMEOUT, f"killed at {why} after {out.seconds:.0f} s", out.output[-4000:], out.seconds)
        elif out.rc != 0 and job.verify is not None:
            mark(FAIL, f"exit code {out.rc}: {last_line(out.output)}", out.output[-4000:], out.seconds)
        elif job.verify is not None:
            try:
                detail = job.verify(ctx, out.output)
                mark(PASS, detail, "", out.seconds)
            except Exception as exc:  # noqa: BLE001
                mark(FAIL, f"{type(exc).__name__}: {exc}"[:300], out.output[-4000:], out.seconds)
        else:  # a throughput job: its rows came from its result file
            mark(FAIL, f"exit code {out.rc} before this row: {last_line(out.output)}", out.output[-4000:], out.seconds)
            state[job.name] = PASS if all(succeeded(r.status) for r in mine) else FAIL
        log.info("    -> %s (%.1f s, %.1f CPU s)", ", ".join(sorted({r.status for r in mine})), out.seconds, out.cpu_s)


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def prepare_data(ctx: Ctx) -> None:
    from reid_masks.synth.layouts import synthesize

    workers = max(1, min(8, os.cpu_count() or 1)) if ctx.cuda else 1  # no worker pool alive across a fork
    synthesize("market1501", ctx.data, ids=ctx.sizes.synth_ids, seed=0, workers=workers)
    if ctx.sizes.detector_set == "mini" or ctx.sizes.e2e_ids == 0:
        make_mini(ctx.data, ctx.mini)


PRELOAD = ("torch", "torchvision", "reid_masks.cli", "reid_train.cli", "reid_masks.generate", "reid_masks.backends.torchvision_backend",
           "reid_masks.parsing.schp", "reid_train.engine.trainer", "reid_train.engine.evaluator", "reid_train.export",
           "torch.distributed.run", "onnx", "onnxruntime", "bench_generate", "bench_parser", "bench_train", "bench_mgran", "bench_eval")


def preload() -> None:
    """Import what the children use once, before forking them (imports only: no thread pool may exist at a fork)."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the child that needs it reports the error


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Statuses: pass, fail, timeout, n/a on cpu, skipped: time budget, skipped: needs X.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda when available")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CI); speed rows are not comparable with the targets")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for all checks [{DEFAULT_BUDGET_S[False]:.0f}; {DEFAULT_BUDGET_S[True]:.0f} with --smoke]")
    p.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="where the rows go as JSON [gpu_check.json]")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder [a temporary one, removed at the end]")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs/ has every check's output)")
    p.add_argument("--only", default=None, help="comma-separated prefixes of checks to run, e.g. fit/mmga,speed/train")
    p.add_argument("--spawn", action="store_true", help="fresh interpreters for the children on CPU too (as on CUDA)")
    p.add_argument("--speed-job", choices=sorted(SPEED_FUNCS), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ddp-probe", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(args: Optional[list[str]] = None) -> int:
    a = parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    if a.ddp_probe:
        return ddp_probe(a.device)
    sizes = SMOKE if a.smoke else FULL
    if a.speed_job:
        return run_speed_job(a.speed_job, Ctx(a.device, a.smoke, a.workdir, sizes), a.result)

    t_start = time.monotonic()
    budget = a.budget if a.budget is not None else DEFAULT_BUDGET_S[a.smoke]
    deadline = t_start + budget
    import torch

    from machine import describe_machine
    from reid_masks.fileio import write_json_atomic

    device = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: CUDA is not available on this machine", file=sys.stderr)
        return 2
    own_work = a.workdir is None
    work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(device, a.smoke, work, sizes)
    if ctx.cuda:  # the parent never forks on CUDA, so it may ask the driver
        ctx.gpus = torch.cuda.device_count()
        ctx.gpu_name = torch.cuda.get_device_name(0)
        ctx.bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        runner = run_spawned
    else:
        runner = run_spawned if a.spawn else run_forked
        if runner is run_forked:
            preload()
        if a.smoke:  # tiny tensors: a second thread only adds synchronisation (and spinning on a busy machine)
            ctx.child_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    machine = describe_machine(device)
    log.info("%s; work folder %s; budget %.0f s", machine, work, budget)
    jobs = smoke_jobs() + speed_jobs()
    by_id = {rid: Row(rid, what) for j in jobs for rid, what in j.rows}
    try:
        t = time.perf_counter()
        prepare_data(ctx)
        log.info("synthetic Market-1501 (%d ids) in %.1f s", sizes.synth_ids, time.perf_counter() - t)
        run_jobs(ctx, jobs, select(jobs, a.only), deadline, runner, by_id)
    except KeyboardInterrupt:
        log.warning("interrupted: the table shows what finished")
    finally:
        rows = list(by_id.values())
        for r in rows:
            if r.status == "not run":
                r.status = "not run (interrupted)"
        elapsed = time.monotonic() - t_start
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        title = (f"gpu_check on {device}" + (f" ({ctx.gpus} x {ctx.gpu_name})" if ctx.cuda else "")
                 + (", --smoke sizes" if a.smoke else "") + f": {elapsed:.0f} s of a {budget:.0f} s budget")
        print(f"\n## {title}\n\n{machine}\n\n{format_table(rows)}\n")
        print("summary: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
        errors = format_errors(rows)
        if errors:
            print("\nerrors (last lines of each failed check):\n" + errors)
        report = {"title": title, "command": " ".join(["python benchmarks/gpu_check.py", *(args if args is not None else sys.argv[1:])]),
                  "machine": machine, "device": device, "gpus": ctx.gpus, "gpu_name": ctx.gpu_name, "smoke": a.smoke,
                  "budget_s": budget, "elapsed_s": elapsed, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "summary": counts, "rows": [dataclasses.asdict(r) for r in rows]}
        write_json_atomic(a.json, report)
        print(f"json: {a.json}")
        if own_work and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif a.keep or not own_work:
            print(f"work folder (logs/ has each check's output): {work}")
    return 1 if any(r.status in (FAIL, TIMEOUT) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
