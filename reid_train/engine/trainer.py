"""The training loop of reid-train: SGD, step decay, AMP on CUDA, exact resume, JSONL metrics.

One :class:`Trainer` per run. Everything a run produces lives in ``train.output_dir``:

* ``config.yaml``   the resolved config (every key the model reads, after ``_base_`` and
  ``--set``; it loads back with ``--config``);
* ``checkpoint.pth`` written after every epoch (before its evaluation, so that a stopped,
  failed or killed evaluation costs only itself) through a temporary file and
  ``os.replace``, so a crash never leaves a truncated checkpoint: model, optimizer,
  scheduler, GradScaler, sampler state, RNG states (python, numpy, torch, cuda), the
  number of completed epochs, the config and the number of classes; a run stopped by a
  signal also records the iteration it stopped after (``iteration``), the epoch's loader
  seed and loss sums. It loads with ``torch.load(..., weights_only=True)``; temporary
  files of writers that died (same host) are removed when ``fit`` starts;
* ``metrics.jsonl`` one JSON object per epoch (see :meth:`Trainer.train_epoch`), plus
  ``rank1 rank5 rank10 mAP`` on the epochs that were evaluated;
* ``evaluations.jsonl`` one record per evaluated epoch, appended after that epoch's
  checkpoint is saved (scores, fractions in [0, 1], of the first test set; every set of
  ``data.test_sets`` under ``test_sets``; the settings, checkpoint epoch and sha256 and the
  config: ``reid_train/results.py``);
* ``log.txt`` the progress log (written by the CLI);
* ``tb/`` TensorBoard scalars, when ``tensorboard`` is installed and ``train.tensorboard``.

**Exact resume**: a run of 4 epochs and a run of 2 epochs resumed for 2 more produce the
same weights (bitwise on CPU with ``data.num_workers=0``). That holds because the P x K
sampler's order depends only on (seed, epoch), all RNG states are restored, DataLoader
worker seeds are drawn from the restored torch RNG, and evaluation runs with the RNG
state saved and put back, so evaluating (or not) never changes training.

**Stopping mid-epoch** (SIGTERM, SIGUSR1, Ctrl-C; ``preemption.py``): the current
iteration is finished, the checkpoint records the iteration and the RNG states of that
moment, and :class:`Stopped` is raised. ``--resume`` then continues with the next
iteration: the sampler yields the epoch's batches from there (``num_workers=0``), or the
loader replays the skipped batches in its workers, seeded from the epoch's saved loader
seed (``num_workers>0``: the workers' RNG streams are those of the uninterrupted run), so
the final weights equal an uninterrupted run's. Under DDP the ranks agree after every
iteration (one all-reduce of a flag) so they stop at the same one. A signal during the
evaluation after an epoch ends it at once (:meth:`StopSignals.interruptible`: the epoch is
saved already); under DDP every rank must get it, as Slurm and torchrun send it to all.

Multi-GPU: launched by ``torchrun``, the trainer joins the process group (NCCL on CUDA,
gloo on CPU), wraps the model in DDP (optionally with SyncBatchNorm, ``train.sync_bn``)
and uses :class:`DistributedIdentitySampler`; rank 0 alone logs and writes files; every
rank extracts a shard of query/gallery for evaluation (gathered, scored like one process).
Debug: ``$REID_TRAIN_PARAM_CHECKSUM_DIR`` makes every rank dump weight checksums at the end
of :meth:`Trainer.fit` (see docs/distributed.md).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from reid_masks.datasets import ReIDDataset, build_dataset
from reid_masks.errors import UserError
from reid_masks.fileio import append_json_line, atomic_path, is_disk_full, remove_dead_temps, write_text_atomic
from reid_train.config import Config, config_from_dict, config_to_dict
from reid_train.data import DistributedIdentitySampler, IdentitySampler, ReIDImageDataset, build_transforms
from reid_train.data.regions import expand_region_codes
from reid_train.data.cache_check import check_cache_images
from reid_train.data.dataset import damaged_cache_errors
from reid_train.data.workers import cap_workers
from reid_train.engine import distributed as ddp
from reid_train.engine.test_sets import build_test_sets, check_test_set_caches, evaluate_test_sets
from reid_masks.workers import detached_worker_init
from reid_train.engine.preemption import StopNow, StopSignals, Stopped
from reid_train.losses_mgran import build_loss
from reid_train.models import FSA_VARIANTS, MGRAN_VARIANTS, build_model, region_inputs
from reid_train.results import EVALUATIONS_NAME, evaluation_record, fit_evaluation

__all__ = [
    "Trainer", "WarmupStepLR", "build_optimizer", "build_model_from_config", "resolve_device",
    "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "get_rng_state", "set_rng_state",
    "CHECKPOINT_NAME", "METRICS_NAME",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_FORMAT = "reid-train-checkpoint"
CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------- helpers


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device``: bf16/fp16 on CUDA, None (float32) elsewhere."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; a CUDA request on a CPU-only host is a UserError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"train.device: {spec!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec}: CUDA is not available on this machine (use train.device=cpu or auto)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"train.device: {spec!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    return device


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as tensors/lists, loadable with weights_only=True."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning("checkpoint has CUDA RNG states of %d devices, this host has %d; CUDA RNG not restored",
                           len(cuda_states), torch.cuda.device_count())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class WarmupStepLR(torch.optim.lr_scheduler.LRScheduler):
    """Step decay per epoch (``x gamma`` every ``step_size`` epochs) with optional linear warmup.

    lr(e) = base_lr * gamma^(e // step_size) * w(e), where w rises linearly from
    ``warmup_factor`` at epoch 0 to 1 at ``warmup_epochs`` (w = 1 without warmup, which is
    exactly torch's StepLR). Closed form, so resuming only needs ``last_epoch``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, step_size: int, gamma: float,
                 warmup_epochs: int = 0, warmup_factor: float = 0.1, last_epoch: int = -1) -> None:
        self.step_size = step_size
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.warmup_factor = warmup_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        f = self.gamma ** (epoch // self.step_size)
        if epoch < self.warmup_epochs:
            f *= self.warmup_factor + (1.0 - self.warmup_factor) * epoch / self.warmup_epochs
        return f

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


#: The config key that sets each optimizer group's learning rate: logs and metrics.jsonl use these names.
LR_KEYS = {"backbone": "backbone_lr", "head": "lr"}


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{config key: current lr}`` of the groups that hold parameters (MGRAN without a reduction
    layer or identity head has no non-backbone weights, so no ``lr``)."""
    return {LR_KEYS.get(g.get("name"), str(g.get("name", i))): g["lr"]
            for i, g in enumerate(optimizer.param_groups) if g["params"]}


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.SGD:
    """SGD with two groups: backbone parameters at ``solver.backbone_lr``, the rest at ``solver.lr``
    (empty for a model without non-backbone weights: :func:`learning_rates` leaves it out)."""
    s = cfg.solver
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [
        {"params": backbone, "lr": s.backbone_lr, "name": "backbone"},
        {"params": rest, "lr": s.lr, "name": "head"},
    ]
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, nesterov=s.nesterov and s.momentum > 0)


def build_model_from_config(cfg: Config, num_classes: int, pretrained: str | None = "config") -> nn.Module:
    """``build_model`` with the ``model`` section; ``pretrained`` overrides it (checkpoints: None)."""
    m = cfg.model
    if m.name in FSA_VARIANTS:  # FSA family (reid_train/models/fsa.py): built for the run's input size
        options: dict[str, Any] = {"mhsa_heads": m.mhsa_heads} if FSA_VARIANTS[m.name].mhsa else {}
        return build_model(
            m.name, num_classes, backbone=m.backbone,
            pretrained=m.pretrained if pretrained == "config" else pretrained,
            last_stride=m.last_stride, input_size=(cfg.data.height, cfg.data.width), **options,
        )
    if m.name in MGRAN_VARIANTS:  # MGRAN family: its own options (reid_train/models/mgran.py)
        return build_model(
            m.name, num_classes, backbone=m.backbone,
            pretrained=m.pretrained if pretrained == "config" else pretrained,
            last_stride=m.last_stride, reduction_dim=m.reduction_dim, id_head=m.id_head,
        )
    return build_model(
        m.name, num_classes, backbone=m.backbone,
        pretrained=m.pretrained if pretrained == "config" else pretrained,
        last_stride=m.last_stride, stage4_input=m.stage4_input,
        whole_dim=m.whole_dim, part_dim=m.part_dim, head_bn=m.head_bn,
    )


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) checkpoint state: about its size on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``.

    A full disk (or quota) is a one-line UserError naming the folder, the space needed and
    the space free; the temporary file is removed and a previous ``path`` stays as it was.
    """
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
    except (OSError, RuntimeError) as exc:  # torch reports ENOSPC as "unexpected pos" with the OSError as context
        if not is_disk_full(exc):
            raise
        st = os.statvfs(path.parent)
        kept = f"{path} keeps the previous state" if path.exists() else f"no {path.name} written yet"
        raise UserError(f"{path.parent}: no space left on the device to write {path.name} (needs about "
                        f"{_mib(_tensor_bytes(state) * 1.02 + 2**20)}, {_mib(st.f_bavail * st.f_frsize)} free); {kept}; "
                        f"free some space there") from None


CHECKPOINT_KEYS = ("epoch", "num_classes", "model", "config")  # what every use of a checkpoint needs
TRAINING_KEYS = ("optimizer", "scheduler", "sampler", "rng")  # what fit --resume needs besides


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A reid-train checkpoint (weights_only); a missing, foreign or incomplete file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a reid-train checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')}, this reid-train reads version {CHECKPOINT_VERSION}")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{path}: incomplete checkpoint (no {', '.join(missing)}); use a checkpoint.pth written by 'reid-train fit'")
    if not isinstance(ckpt["model"], dict) or not ckpt["model"]:
        raise UserError(f"{path}: the checkpoint holds no model weights; use a checkpoint.pth written by 'reid-train fit'")
    if not isinstance(ckpt["config"], dict):
        raise UserError(f"{path}: the checkpoint's config is not a mapping; use a checkpoint.pth written by 'reid-train fit'")
    return ckpt


def load_weights(model: nn.Module, state: dict[str, Any], source: str | Path, cfg: Config) -> None:
    """``model.load_state_dict(state)``; weights of another architecture are a one-line UserError
    naming ``source``, the model the config builds and the first differences."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        first = ([f"{shapes[0]} is {tuple(state[shapes[0]].shape)} in the file, {tuple(own[shapes[0]].shape)} in the model"] if shapes else []) + \
                ([f"'{missing[0]}' missing"] if missing else []) + ([f"'{unexpected[0]}' not in the model"] if unexpected else [])
        raise UserError(f"{source}: its weights do not fit model.name={cfg.model.name} model.backbone={cfg.model.backbone} "
                        f"({len(shapes)} shape(s) differ, {len(missing)} missing, {len(unexpected)} unexpected; {'; '.join(first)}): "
                        f"the checkpoint is of another model; drop any --set model.* that changes the architecture")
    model.load_state_dict(state)


def model_from_checkpoint(ckpt: dict[str, Any], cfg: Config | None = None, source: str | Path = "checkpoint") -> tuple[nn.Module, Config]:
    """The trained model of a checkpoint (random init replaced by the saved weights; no ImageNet file needed)."""
    cfg = cfg or config_from_dict(ckpt["config"], f"{source} config")
    model = build_model_from_config(cfg, int(ckpt["num_classes"]), pretrained=None)
    load_weights(model, ckpt["model"], source, cfg)
    return model, cfg


class _preserved_rng:
    """Context manager: RNG states are put back on exit (evaluation must not perturb training)."""

    def __enter__(self) -> None:
        self.state = get_rng_state()

    def __exit__(self, *exc: Any) -> None:
        set_rng_state(self.state)


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h:d}:{m:02d}:{s:02d}"


# --------------------------------------------------------------------------- trainer


def train_step(
    net: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    pids: torch.Tensor,
    masks: torch.Tensor | None,
    amp_dtype: torch.dtype | None,
    where: str = "",
) -> dict[str, float]:
    """One optimisation step (autocast forward, loss, finite check, scaled backward, SGD step).

    Shared by the trainer and the benchmarks so that what is timed is what trains.
    """
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        outputs = net(images)
    loss, terms = criterion(outputs, pids, masks)
    if not math.isfinite(terms["total"]):  # one host sync per step
        raise FloatingPointError(f"{where}loss is {terms['total']} ({terms})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return terms


class Trainer:
    """Builds data, model, loss and optimizer from a :class:`Config` and runs :meth:`fit`.

    ``resume=True`` continues from ``<output_dir>/checkpoint.pth``; without it an output
    folder that already holds a checkpoint is refused (no silent overwrite of a run).
    """

    def __init__(self, cfg: Config, resume: bool = False) -> None:
        self.cfg = cfg
        self.output_dir = Path(cfg.train.output_dir)
        self.ckpt_path = self.output_dir / CHECKPOINT_NAME
        self.metrics_path = self.output_dir / METRICS_NAME
        self._init_distributed()
        self.main = self.rank == 0

        if resume and not self.ckpt_path.is_file():
            raise UserError(f"--resume: no checkpoint at {self.ckpt_path} (train.output_dir={cfg.train.output_dir})")
        if not resume and self.ckpt_path.exists():
            raise UserError(f"{self.ckpt_path} exists: pass --resume to continue that run, or set another train.output_dir")

        if cfg.data.num_ids < 2 and (cfg.model.name in MGRAN_VARIANTS or cfg.loss.lambda1 > 0):
            raise UserError(f"data.num_ids={cfg.data.num_ids}: the {'MSML' if cfg.model.name in MGRAN_VARIANTS else 'triplet'} loss "
                            f"needs at least 2 identities per batch (P >= 2) to have negatives")
        # seed + rank: ranks draw different augmentations (DDP broadcasts rank 0's initial weights)
        seed_everything(cfg.train.seed + self.rank)
        d = cfg.data
        self.dataset: ReIDDataset = build_dataset(d.dataset, d.root, **d.options)
        if not self.dataset.train:
            raise UserError(f"{d.dataset} at {d.root}: the train split is empty")
        self.num_classes = self.dataset.num_train_pids
        self.test_sets = build_test_sets(cfg, self.dataset)  # data.test_sets: cross-dataset evaluation

        self.model = build_model_from_config(cfg, self.num_classes)
        self.criterion = build_loss(cfg.model.name, cfg.loss)  # MMGALoss, or MSML for mgran*
        # MGRAN: (N, 4, H, W) pedestrian/region masks with every image (train and test)
        self.region_masks: str | None = getattr(self.model, "region_masks", None)
        needs_masks = bool(self.model.required_masks) or bool(self.region_masks)
        cache = None
        if needs_masks:
            if not d.cache:
                raise UserError(f"model.name={cfg.model.name} is trained with body masks: set data.cache to the HDF5 file of 'reid-masks generate'")
            cache = d.cache
        elif d.cache:
            logger.info("model.name=%s uses no mask loss: data.cache only serves to check the images", cfg.model.name)
        check_test_set_caches(self.test_sets, self.model)  # MGRAN: every test set's masks, before training
        # before any computation: stale masks and unusable query/gallery rows are refused, unusable train rows left out
        with damaged_cache_errors(d.cache):  # a corrupted chunk: one line naming the cache, split and rows
            usable = check_cache_images(d.cache, self.dataset, ("train", "query", "gallery"))["train"] if d.cache else None
            train_tf, _ = build_transforms((d.height, d.width), d.flip_prob, d.pad, d.erasing_prob, d.mean, d.std)
            self.train_set = ReIDImageDataset(self.dataset, "train", train_tf, cache=cache, region_masks=self.region_masks, indices=usable)
        if self.world_size > 1:
            self.sampler: IdentitySampler = DistributedIdentitySampler(
                self.train_set.pids, d.num_ids, d.num_instances, cfg.train.seed, self.world_size, self.rank)
            if self.main and d.num_ids // self.world_size < 2:  # batch-hard mining is per rank
                logger.warning("data.num_ids=%d over %d processes leaves one identity per rank: the triplet "
                               "loss has no negatives (use P >= 2 x world size)", d.num_ids, self.world_size)
        else:
            self.sampler = IdentitySampler(self.train_set.pids, d.num_ids, d.num_instances, cfg.train.seed)

        # Device-specific speed-ups only where they exist (CUDA); CPU runs stay exact.
        cuda = self.device.type == "cuda"
        self.amp_dtype = amp_dtype(cfg.train.amp, self.device)
        if cfg.train.amp != "none" and not cuda:
            logger.warning("train.amp=%s is ignored on %s (mixed precision is used on CUDA only)", cfg.train.amp, self.device)
        self.channels_last = cfg.train.channels_last and cuda
        if cuda:
            torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark
        self.model = ddp.maybe_sync_bn(self.model, cfg.train.sync_bn, self.device, self.world_size)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        s = cfg.solver
        self.scheduler = WarmupStepLR(self.optimizer, s.step_size, s.gamma, s.warmup_epochs, s.warmup_factor)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.net: nn.Module = self.model
        if self.world_size > 1:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if cuda else None)

        self.start_epoch = 0
        self.start_iter = 0  # iterations of start_epoch already done (a run stopped mid-epoch)
        self._resumed_epoch: dict[str, Any] | None = None  # that epoch's loader seed and loss sums
        self.saved: tuple[int, int] | None = None  # (epoch, iteration) of the checkpoint on disk, None before the first
        self._last_record: dict[str, Any] = {}  # metrics record of the last completed epoch (kept in every checkpoint)
        if self.main:
            remove_dead_temps(self.output_dir, CHECKPOINT_NAME)  # 37-99 MB each, left by killed writes
        if resume:
            self._resume()
        elif self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.metrics_path.exists():
                self.metrics_path.unlink()  # a log without a checkpoint belongs to a run that never finished an epoch
        if self.main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg, read_only=True), sort_keys=False))
        self.tb = self._tensorboard() if self.main and cfg.train.tensorboard else None
        logger.info(
            "%s: %d train images, %d ids; model %s/%s (%s), feature dim %d; %s%s; P=%d K=%d, %d iterations/epoch",
            self.dataset.name, len(self.train_set), self.num_classes, cfg.model.name, cfg.model.backbone,
            cfg.model.pretrained, self.model.feature_dim, self.device,
            f", amp {cfg.train.amp}" if self.amp_dtype is not None else "", d.num_ids, d.num_instances, len(self.sampler),
        )

    # ----------------------------------------------------------------- setup

    def _init_distributed(self) -> None:
        # torchrun env -> process group (NCCL on CUDA with cuda:LOCAL_RANK, gloo on CPU)
        self.world_size = ddp.env_world_size()
        self.rank = ddp.env_rank()
        self.device = ddp.init_from_env(resolve_device(self.cfg.train.device))

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("train.tensorboard=true but tensorboard is not installed (pip install tensorboard): metrics go to %s only", self.metrics_path)
            return None
        return SummaryWriter(str(self.output_dir / "tb"))

    def _resume(self) -> None:
        # CPU: RNG states must stay CPU tensors; load_state_dict moves weights and optimizer state to the device
        ckpt = load_checkpoint(self.ckpt_path, map_location="cpu")
        missing = [k for k in TRAINING_KEYS if k not in ckpt]
        if missing:
            raise UserError(f"{self.ckpt_path}: no {', '.join(missing)} state to continue training from (a weights-only "
                            f"checkpoint: it can be evaluated and exported, not resumed)")
        if int(ckpt["num_classes"]) != self.num_classes:
            raise UserError(f"{self.ckpt_path}: trained on {ckpt['num_classes']} identities, the dataset has {self.num_classes}")
        old = config_to_dict(config_from_dict(ckpt["config"], str(self.ckpt_path)))
        new = config_to_dict(self.cfg)
        changed = [f"{sec}.{k}: {old[sec][k]!r} -> {new[sec][k]!r}" for sec in new for k in new[sec] if old[sec].get(k) != new[sec][k]]
        if changed and self.main:
            logger.warning("resuming with a changed config: %s", "; ".join(changed))
        load_weights(self.model, ckpt["model"], self.ckpt_path, self.cfg)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.ckpt_path}: its optimizer state does not fit this model ({str(exc).splitlines()[0]}); "
                            f"the checkpoint was written by another model or solver") from None
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # the schedule's constants come from the (possibly changed) config, not the checkpoint
        s = self.cfg.solver
        self.scheduler.step_size, self.scheduler.gamma = s.step_size, s.gamma
        self.scheduler.warmup_epochs, self.scheduler.warmup_factor = s.warmup_epochs, s.warmup_factor
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        per_rank = ckpt.get("rng_per_rank")
        if self.world_size > 1 and per_rank is not None and len(per_rank) == self.world_size:
            set_rng_state(per_rank[self.rank])
        else:
            if self.main and (self.world_size > 1 or per_rank is not None):
                logger.warning("checkpoint RNG states are from %d process(es), this run has %d: augmentation "
                               "randomness is not resumed exactly", len(per_rank or [0]), self.world_size)
            set_rng_state(ckpt["rng"])
            if self.world_size > 1:  # no state per rank: re-seed so ranks still augment differently, reproducibly
                seed_everything(self.cfg.train.seed + self.rank + 7919 * int(ckpt["epoch"]))
        self.start_epoch = int(ckpt["epoch"])
        self.start_iter = int(ckpt.get("iteration", 0))
        self.saved = (self.start_epoch, self.start_iter)
        self._last_record = dict(ckpt.get("metrics") or {})
        if self.start_iter:
            parts = ckpt.get("partial_per_rank")
            own = parts[self.rank] if parts is not None and len(parts) == self.world_size else ckpt["partial"]
            self._resumed_epoch = {"loader_seed": int(ckpt["loader_seed"]), **own}
        if self.main and self.metrics_path.exists():
            self._repair_metrics()
        logger.info("resumed from %s: continuing with epoch %d%s (epochs are 1-based, as in metrics.jsonl)",
                    self.ckpt_path, self.start_epoch + 1,
                    f" at iteration {self.start_iter + 1} ({self.start_iter} done)" if self.start_iter else "")

    def _repair_metrics(self) -> None:
        """Make metrics.jsonl agree with the checkpoint it resumes from: lines of later epochs go,
        a torn line (a write cut short by a kill or a full disk) goes, and the checkpoint's epoch
        gets its line back from the record the checkpoint keeps (scores from the fit's evaluation record)."""
        kept: list[str] = []
        torn: list[int] = []
        epochs: set[int] = set()
        for no, ln in enumerate(self.metrics_path.read_text(errors="replace").splitlines(), 1):
            if not ln.strip():
                continue
            try:
                epoch = json.loads(ln).get("epoch", 0)
            except (ValueError, AttributeError):
                torn.append(no)
                continue
            if epoch <= self.start_epoch:
                kept.append(ln)
                epochs.add(epoch)
        restored = ""
        if self.start_epoch not in epochs and self._last_record.get("epoch") == self.start_epoch:
            record = dict(self._last_record)
            scores = fit_evaluation(self.output_dir, self.start_epoch) or {}
            record.update({k: scores[k] for k in ("rank1", "rank5", "rank10", "mAP") if k in scores})
            kept.append(json.dumps(record))
            restored = f"; epoch {self.start_epoch}'s line restored from {self.ckpt_path.name}"
        if torn:
            logger.warning("%s: line %s was torn (a write cut short) and is dropped%s", self.metrics_path,
                           ", ".join(map(str, torn)), restored)
        elif restored and self.main:
            logger.warning("%s: no line for epoch %d%s", self.metrics_path, self.start_epoch, restored)
        write_text_atomic(self.metrics_path, "".join(ln + "\n" for ln in kept))

    def _rank_rng_states(self) -> list[dict[str, Any]] | None:
        """Under DDP, every rank's RNG states (collective: all ranks call it); else None."""
        return self._gather(get_rng_state())

    def _gather(self, obj: Any) -> list[Any] | None:
        """Under DDP, ``obj`` of every rank (collective); else None."""
        if self.world_size == 1:
            return None
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def checkpoint_state(self, epoch: int, metrics: dict[str, Any], rank_rng: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue the run exactly; JSON-like values and tensors only."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "epoch": epoch,
            "iteration": 0,
            "num_classes": self.num_classes,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": get_rng_state(),
            "config": config_to_dict(self.cfg),
            "dataset": {"name": self.dataset.name, "root": str(self.dataset.root)},
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
        }
        if rank_rng is not None:
            state["rng_per_rank"] = rank_rng
        return state

    # ----------------------------------------------------------------- loop

    def _loader(self, epoch: int, start: int, seed: int) -> Iterator[dict[str, Any]]:
        """Epoch ``epoch``'s batches from iteration ``start`` on.

        The loader's own generator, seeded with ``seed`` (drawn from the torch RNG at the
        start of the epoch and saved with a mid-epoch checkpoint), seeds its workers.
        ``persistent_workers=False``: each epoch's workers are seeded anew, from a seed that
        a resumed run restores (persistent ones would keep old seeds). Without workers the
        sampler skips the first ``start`` batches; with workers they are loaded and dropped,
        so every worker's RNG stream is that of the uninterrupted epoch.
        """
        workers = cap_workers(self.cfg.data.num_workers)
        self.sampler.set_epoch(epoch, start=0 if workers else start)
        loader = DataLoader(
            self.train_set, batch_sampler=self.sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            worker_init_fn=detached_worker_init if workers else None,  # a signal must not kill the batch in flight
            generator=torch.Generator().manual_seed(seed),
        )
        batches = iter(loader)
        for _ in range(start if workers else 0):
            next(batches)
        return batches

    def _batches(self, loader: Iterator[dict[str, Any]]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        for batch in loader:
            images = self.train_set.transform.normalize(batch["image"].to(self.device, non_blocking=True), batch.get("erase"))
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            pids = batch["pid"].to(self.device, non_blocking=True)
            masks = batch["masks"].to(self.device, non_blocking=True) if "masks" in batch else None
            if "region_codes" in batch:  # MGRAN: the 4 Hadamard-product inputs (N, 4, 3, H, W)
                codes = batch["region_codes"].to(self.device, non_blocking=True)
                images = region_inputs(images, expand_region_codes(codes, self.region_masks))
            yield images, pids, masks

    def train_epoch(self, epoch: int, stop: StopSignals | None = None) -> dict[str, Any]:
        """One epoch (``epoch`` 0-based). Returns the JSONL record of the epoch:

        ``epoch`` (1-based, completed epochs), the batch-weighted mean of every loss term of
        :class:`MMGALoss` (``total``, ``ce_whole``, [``ce_local``], ``triplet``,
        [``att``, ``att_m1_whole``, ``att_m2_*``]), ``backbone_lr`` and ``lr`` (the groups that exist),
        ``images_per_s``, ``time_s``. The epoch a run resumed in mid-epoch continues
        from its saved iteration, loader seed and loss sums. When ``stop`` has caught a
        signal, the epoch ends after the current iteration with a checkpoint and
        :class:`Stopped`.
        """
        cfg = self.cfg
        self.net.train()
        lrs = learning_rates(self.optimizer)
        sums: dict[str, float] = defaultdict(float)
        seen, first, before = 0, 0, 0.0
        resumed = self._resumed_epoch if epoch == self.start_epoch else None
        if resumed is not None:
            first, seed = self.start_iter, resumed["loader_seed"]
            sums.update(resumed["sums"])
            seen, before = int(resumed["seen"]), float(resumed["time_s"])
        else:  # the draw a DataLoader makes for its base seed, taken here so a checkpoint can keep it
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        iters = len(self.sampler)
        start = time.perf_counter() - before
        for it, (images, pids, masks) in enumerate(self._batches(self._loader(epoch, first, seed)), start=first):
            terms = train_step(self.net, self.criterion, self.optimizer, self.scaler, images, pids, masks,
                               self.amp_dtype, where=f"epoch {epoch + 1} iteration {it + 1}: ")
            n = images.shape[0]
            seen += n
            for k, v in terms.items():
                sums[k] += v * n
            if self.main and ((it + 1) % cfg.train.log_period == 0 or it + 1 == iters):
                elapsed = time.perf_counter() - start
                rate = seen * self.world_size / max(elapsed, 1e-9)
                remaining_iters = (iters - it - 1) + (cfg.solver.epochs - epoch - 1) * iters
                eta = remaining_iters * (elapsed - before) / (it + 1 - first)
                logger.info("epoch %d/%d [%d/%d] loss %.4f (%s) %s %.1f img/s eta %s",
                            epoch + 1, cfg.solver.epochs, it + 1, iters, sums["total"] / seen,
                            " ".join(f"{k} {sums[k] / seen:.4f}" for k in terms if k != "total"),
                            " ".join(f"{k} {v:.4g}" for k, v in lrs.items()), rate, _format_eta(eta))
            if stop is not None and it + 1 < iters and self._stop_agreed(stop):
                partial = {"sums": dict(sums), "seen": seen, "time_s": time.perf_counter() - start}
                self._stop(stop, epoch, it + 1, {"loader_seed": seed, "partial": partial}, self._gather(partial))
        elapsed = time.perf_counter() - start
        if self.world_size > 1:  # mean over all ranks' images
            import torch.distributed as dist

            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [float(seen)], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums, seen = dict(zip(keys, t[:-1].tolist())), int(t[-1].item())
        record: dict[str, Any] = {"epoch": epoch + 1}
        record.update({k: v / max(seen, 1) for k, v in sums.items()})
        record.update(lrs)  # backbone_lr [, lr]: named as the config keys
        record["images_per_s"] = seen / max(elapsed, 1e-9)
        record["time_s"] = elapsed
        return record

    def evaluate(self) -> dict[str, Any]:
        """Evaluate the current model on query/gallery (RNG untouched, train mode restored)."""
        ddp.broadcast_buffers(self.model)  # every rank evaluates rank 0's (checkpointed) model
        with _preserved_rng():
            results = evaluate_test_sets(self.model, self.test_sets, self.device, self.amp_dtype, self.channels_last)
        self.net.train()
        return results

    def _stop_agreed(self, stop: StopSignals) -> bool:
        """Whether any rank caught a stop signal (collective under DDP: all ranks stop at the same iteration)."""
        if self.world_size == 1:
            return stop.requested
        import torch.distributed as dist

        flag = torch.tensor([1.0 if stop.requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def _stop(self, stop: StopSignals, epoch: int, iteration: int, extra: dict[str, Any] | None = None,
              partial_per_rank: list[Any] | None = None) -> None:
        """Raise :class:`Stopped` after ``iteration`` iterations of ``epoch``, saving a checkpoint
        there first (``iteration`` 0: at the end of epoch ``epoch``, whose checkpoint is written)."""
        if iteration:
            rank_rng = self._rank_rng_states()
            if self.main:
                state = self.checkpoint_state(epoch, self._last_record, rank_rng)
                state["iteration"] = iteration
                state.update(extra or {})
                if partial_per_rank is not None:
                    state["partial_per_rank"] = partial_per_rank
                save_checkpoint(self.ckpt_path, state)
                self.saved = (epoch, iteration)
            self._barrier()
        name = stop.name or "a stop signal on another rank"
        where = f"iteration {iteration}/{len(self.sampler)} of epoch {epoch + 1}" if iteration else f"epoch {epoch}"
        raise Stopped(f"stopped by {name} after {where}: {self.ckpt_path} keeps the run up to there",
                      stop.signum or signal.SIGTERM)

    def fit(self) -> dict[str, Any]:
        """Train from ``start_epoch`` to ``solver.epochs``; returns the last epoch's record.

        SIGTERM, SIGUSR1 and Ctrl-C stop the run cleanly (module docstring): a checkpoint,
        then :class:`Stopped`.
        """
        with StopSignals() as stop:
            try:
                return self._fit(stop)
            finally:
                if self.tb is not None:
                    self.tb.close()

    def _fit(self, stop: StopSignals) -> dict[str, Any]:
        cfg = self.cfg
        epochs = cfg.solver.epochs
        record: dict[str, Any] = {}
        if self.start_epoch >= epochs:
            logger.info("checkpoint is at epoch %d >= solver.epochs=%d: nothing to train", self.start_epoch, epochs)
            if (self.start_epoch == epochs and not self.start_iter and self._last_record.get("epoch") == epochs
                    and not self._final_evaluation_done()):
                record = dict(self._last_record)  # the final evaluation was stopped or failed: redo it
                self._evaluate_epoch(epochs, record, stop)
        for epoch in range(self.start_epoch, epochs):
            record = self.train_epoch(epoch, stop)
            self.scheduler.step()
            done = epoch + 1
            self._save_epoch(done, record)  # before the evaluation: a stop or kill during it loses no training
            period = cfg.train.eval_period
            if done == epochs or (period and done % period == 0):
                self._evaluate_epoch(done, record, stop)
            if done < epochs and self._stop_agreed(stop):  # caught during the save
                self._stop(stop, done, 0)
        ddp.dump_param_checksums(self.model, max(self.start_epoch, epochs))  # debug, only with $REID_TRAIN_PARAM_CHECKSUM_DIR
        return record

    def _final_evaluation_done(self) -> bool:
        """Whether evaluations.jsonl holds fit's evaluation of the checkpoint's (final) epoch
        (collective under DDP: rank 0 decides)."""
        done = fit_evaluation(self.output_dir, self.start_epoch) is not None if self.main else True
        return bool(ddp.broadcast_object(done))

    def _save_epoch(self, done: int, record: dict[str, Any]) -> None:
        """Epoch ``done``'s metrics line, then its checkpoint (RNG states of this moment: the
        evaluation puts them back, so saving before it resumes exactly as after it)."""
        rank_rng = self._rank_rng_states()
        if self.main:
            with open(self.metrics_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            self._last_record = dict(record)
            save_checkpoint(self.ckpt_path, self.checkpoint_state(done, record, rank_rng))
            self.saved = (done, 0)
            self._tensorboard_scalars(record, done)
            logger.info("epoch %d/%d done: %s", done, self.cfg.solver.epochs, ", ".join(
                f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and isinstance(v, float)))
        self._barrier()

    def _evaluate_epoch(self, done: int, record: dict[str, Any], stop: StopSignals) -> None:
        """Evaluate the saved epoch ``done``; its scores join ``record`` and its metrics line, and its
        record (with the saved checkpoint's sha256) is appended to evaluations.jsonl.

        A stop signal before or during it ends it at once with :class:`Stopped` (the epoch is
        saved already; the message gives the ``evaluate`` command that redoes the evaluation).
        """
        redo = f"reid-train evaluate --checkpoint {self.ckpt_path}"
        try:
            if self._stop_agreed(stop):  # caught in the epoch's last iteration or during the save
                raise StopNow(stop.signum)
            with stop.interruptible():
                results = self.evaluate()  # collective under DDP: each rank extracts a shard
        except StopNow:
            raise Stopped(f"stopped by {stop.name or 'a stop signal on another rank'} during the evaluation after epoch {done}: "
                          f"{self.ckpt_path} keeps the run up to there; evaluate it with: {redo}",
                          stop.signum or signal.SIGTERM) from None
        except Exception as exc:  # the epoch is saved: say so with the failure
            if self.main:
                logger.error("evaluation after epoch %d failed (%s); the epoch's checkpoint is kept: %s. Fix the cause, then "
                             "'%s' or 'reid-train fit --resume %s'", done,
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.ckpt_path, redo, self.output_dir)
            raise
        if self.main:
            scores = {k: results[k] for k in ("rank1", "rank5", "rank10", "mAP")}
            record.update(scores)
            self._last_record = dict(record)
            append_json_line(self.output_dir / EVALUATIONS_NAME, evaluation_record(
                results, self.cfg, self.cfg, command="fit", epoch=done, checkpoint=self.ckpt_path, amp_dtype=self.amp_dtype))
            lines = self.metrics_path.read_text().splitlines()  # the epoch's line gets its scores
            write_text_atomic(self.metrics_path, "".join(ln + "\n" for ln in lines[:-1]) + json.dumps(record) + "\n")
            self._tensorboard_scalars(scores, done)
        self._barrier()

    def _tensorboard_scalars(self, values: dict[str, Any], step: int) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            if k != "epoch" and isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def _barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()
