"""Training configuration: a dataclass tree with the paper's defaults, read from YAML.

A YAML file sets any subset of the keys below (sections ``data``, ``model``, ``loss``,
``solver``, ``train``, ``test``) and may start from another file with ``_base_: other.yaml``
(a path relative to the including file, or a packaged config name such as
``mmga_market1501``). Command lines override keys with ``--set section.key=value``; the
value is converted to the key's type. An unknown key, a value of the wrong type or one
outside the allowed set is a one-line :class:`UserError` that names the key and what is
allowed -- a typo must not silently train 900 epochs with a default. Every numeric key
declares its range (``_range``) or its choices once, on its field (checked at import), numbers
must be finite (no ``.nan`` / ``.inf``), and a config file must be UTF-8 without a key given
twice in one mapping (YAML's last-one-wins would hide the first).

Every key has code behind it; ``reid-train fit --help`` and the README list them. Some
keys are read by one model family only (:data:`READ_WHEN`): a config file or ``--set`` that
sets such a key for a model that ignores it is refused too (e.g. ``loss.lambda1`` for
``mgran``), so a config cannot quote a setting that changes nothing.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from reid_masks.datasets import check_dataset_options
from reid_masks.errors import UserError
from reid_train.catalog import BACKBONES, FSA_VARIANTS, MGRAN_FAMILY, MODEL_NAMES

__all__ = [
    "Config", "DataConfig", "ModelConfig", "LossConfig", "SolverConfig", "TrainConfig", "TestConfig",
    "load_config", "config_from_dict", "apply_overrides", "config_to_dict", "resolve_config_path",
    "packaged_configs", "CONFIG_DIR", "READ_WHEN", "COMMAND_READS", "unread_keys", "check_overrides",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
TEST_SET_KEYS = ("dataset", "root", "cache", "options")  # one entry of data.test_sets


def _choices(*values: Any) -> dict[str, Any]:
    return {"choices": tuple(values)}


MAX_SIDE = 4096  # image sides in pixels (as reid-train export --height/--width)
MAX_DIM = 65536  # feature widths
#: ``none`` / ``null`` / ``~`` (any case) or an empty value: the key is off (e.g. no mask cache).
NO_VALUE = ("", "none", "null", "~")


def _optional() -> dict[str, Any]:
    """Metadata of a path key that may be off: :data:`NO_VALUE` (YAML null, ``none``) gives ``""``."""
    return {"optional": True}


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict[str, Any]:
    """A numeric key's allowed values, declared on its field; every int/float key has one."""
    return {"min": lo, "max": hi, "lo_open": lo_open}


@dataclass
class DataConfig:
    """Dataset, mask cache, input pipeline and P x K sampling."""

    dataset: str = "market1501"  # a reid_masks.datasets.build_dataset name
    root: str = ""  # dataset root folder
    cache: str = field(default="", metadata=_optional())  # HDF5 mask cache from 'reid-masks generate' (needed by wmga/dmga/mmga; mgran* also at evaluation)
    options: dict[str, Any] = field(default_factory=dict)  # the dataset adapter's options (e.g. folder pattern), as reid-masks --dataset-option
    # evaluate on these instead of data.dataset's query/gallery: [{dataset, root, cache, options}] (engine/test_sets.py)
    test_sets: list[dict[str, Any]] = field(default_factory=list)
    height: int = field(default=384, metadata=_range(16, MAX_SIDE))
    width: int = field(default=128, metadata=_range(16, MAX_SIDE))
    num_ids: int = field(default=24, metadata=_range(1, 4096))  # P identities per batch
    num_instances: int = field(default=4, metadata=_range(1, 1024))  # K images per identity
    flip_prob: float = field(default=0.5, metadata=_range(0.0, 1.0))
    pad: int = field(default=0, metadata=_range(0, MAX_SIDE))  # pad + random crop, pixels per side (0: off)
    erasing_prob: float = field(default=0.5, metadata=_range(0.0, 1.0))
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    num_workers: int = field(default=4, metadata=_range(0, 256))


@dataclass
class ModelConfig:
    """Arguments of reid_train.models.build_model."""

    name: str = field(default="mmga", metadata=_choices(*MODEL_NAMES))
    backbone: str = field(default="resnet50", metadata=_choices(*BACKBONES))
    pretrained: str = "imagenet"  # imagenet | none | path to a ResNet state dict
    last_stride: int = field(default=1, metadata=_choices(1, 2))
    stage4_input: str = field(default="attended", metadata=_choices("attended", "raw"))
    whole_dim: int = field(default=1024, metadata=_range(1, MAX_DIM))
    part_dim: int = field(default=512, metadata=_range(1, MAX_DIM))
    head_bn: bool = True
    reduction_dim: int = field(default=0, metadata=_range(0, MAX_DIM))  # mgran*: shared Linear+BN per branch (0: none, F = branches x 2048)
    id_head: bool = False  # mgran*: identity softmax on F (our addition; MSML is the only loss the paper names)
    mhsa_heads: int = field(default=4, metadata=_range(1, 64))  # fsa_sam/fsa/fsa_mask: heads of the MHSA replacing Conv4_x/Conv5_x's 3x3 convs


@dataclass
class LossConfig:
    """MMGALoss: CE_w + CE_l + lambda1 * triplet + lambda2 * (L1w + L2w + lambda0 * (L2u + L2b)).

    mgran*: MGRANLoss = MSML(F; margin) [+ CE on F with model.id_head] (reid_train/losses_mgran.py).
    fsa*: FSALoss = CE + lambda1 * triplet [+ lambda2 * L_att for fsa_mask] (reid_train/losses_fsa.py).
    """

    margin: float = field(default=0.3, metadata=_range(0.0))
    lambda0: float = field(default=0.5, metadata=_range(0.0))
    lambda1: float = field(default=2.0, metadata=_range(0.0))
    lambda2: float = field(default=0.1, metadata=_range(0.0))
    label_smoothing: float = field(default=0.0, metadata=_range(0.0, 0.999))
    msml_normalize: bool = True  # mgran*: MSML on the L2-normalised F (false: on the raw F)


@dataclass
class SolverConfig:
    """SGD with a backbone lr and a head lr, step decay per epoch, optional linear warmup."""

    epochs: int = field(default=900, metadata=_range(1))
    backbone_lr: float = field(default=0.05, metadata=_range(0.0, lo_open=True))
    lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))  # every non-backbone parameter
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    step_size: int = field(default=90, metadata=_range(1))  # epochs between lr decays
    gamma: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))
    warmup_epochs: int = field(default=0, metadata=_range(0))
    warmup_factor: float = field(default=0.1, metadata=_range(0.0, 1.0, lo_open=True))  # lr multiplier at epoch 0


@dataclass
class TrainConfig:
    """Run control: output folder, seed, device, precision, logging and evaluation cadence."""

    output_dir: str = "runs/mmga"
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))  # numpy and torch accept 0 .. 2**32-1
    device: str = "auto"  # auto (cuda when available) | cpu | cuda | cuda:N
    amp: str = field(default="none", metadata=_choices("none", "bf16", "fp16"))  # CUDA only
    channels_last: bool = True  # CUDA only
    cudnn_benchmark: bool = True  # CUDA only; False with deterministic algorithms for bitwise GPU runs
    eval_period: int = field(default=0, metadata=_range(0))  # evaluate every N epochs (0: only after the last)
    log_period: int = field(default=20, metadata=_range(1))  # iterations between progress lines
    tensorboard: bool = False  # also write TensorBoard scalars to <output_dir>/tb (needs the tensorboard package)
    sync_bn: bool = False  # DDP on CUDA: SyncBatchNorm (BN statistics over all ranks); ignored on CPU / 1 process


@dataclass
class TestConfig:
    """Evaluation: flip-averaged features, distance, optional k-reciprocal re-ranking, multi-query."""

    batch_size: int = field(default=128, metadata=_range(1, 4096))
    flip: bool = True
    metric: str = field(default="euclidean", metadata=_choices("euclidean", "cosine"))
    rerank: bool = False
    k1: int = field(default=20, metadata=_range(1))
    k2: int = field(default=6, metadata=_range(1))
    lambda_value: float = field(default=0.3, metadata=_range(0.0, 1.0))
    # Market-1501 multiple query: pool each query with its gt_bbox/ images of the same identity and camera
    multi_query: str = field(default="none", metadata=_choices("none", "mean", "max"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


def _numeric_keys_without_range() -> list[str]:
    """Dotted int/float keys whose field declares neither ``_range`` nor ``_choices``."""
    missing = []
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) and "min" not in f.metadata and "choices" not in f.metadata:
                missing.append(f"{section.name}.{f.name}")
    return missing


# the range rule is declared once per key, on its field: a numeric key without one is a bug here
if _numeric_keys_without_range():
    raise TypeError(f"config keys without a declared range: {', '.join(_numeric_keys_without_range())}")


# --------------------------------------------------------------------------- who reads what


def _is_mgran(cfg: Config) -> bool:
    return cfg.model.name in MGRAN_FAMILY


def _is_fsa(cfg: Config) -> bool:
    return cfg.model.name in FSA_VARIANTS


def _is_mmga(cfg: Config) -> bool:
    return not _is_mgran(cfg) and not _is_fsa(cfg)


READ_WHEN: dict[str, typing.Callable[[Config], bool]] = {
    # MMGA family (reid_train/models/mmga.py, MMGALoss in reid_train/losses.py)
    "model.stage4_input": _is_mmga,
    "model.whole_dim": _is_mmga,
    "model.part_dim": _is_mmga,
    "model.head_bn": _is_mmga,
    "loss.lambda0": _is_mmga,
    "loss.lambda1": lambda cfg: _is_mmga(cfg) or _is_fsa(cfg),  # the triplet weight
    "loss.lambda2": lambda cfg: _is_mmga(cfg) or bool(_is_fsa(cfg) and FSA_VARIANTS[cfg.model.name].masks),
    # FSA family (reid_train/models/fsa.py, FSALoss in reid_train/losses_fsa.py)
    "model.mhsa_heads": lambda cfg: _is_fsa(cfg) and FSA_VARIANTS[cfg.model.name].mhsa,
    # MGRAN family (reid_train/models/mgran.py, MGRANLoss in reid_train/losses_mgran.py)
    "model.reduction_dim": _is_mgran,
    "model.id_head": _is_mgran,
    "loss.msml_normalize": _is_mgran,
    # the identity softmax: always in MMGA and FSA, only with model.id_head in MGRAN
    "loss.label_smoothing": lambda cfg: not _is_mgran(cfg) or cfg.model.id_head,
    # the optimizer's non-backbone group: empty for an MGRAN without reduction layer or id head
    "solver.lr": lambda cfg: not _is_mgran(cfg) or cfg.model.id_head or cfg.model.reduction_dim > 0,
}
"""Keys that only some models read: ``key -> predicate(final config)``; every other key is
read by every model."""


# What each command other than ``fit`` reads of its config (``fit`` reads every key its model
# reads). The model, its input size and normalisation come from the checkpoint and the
# training keys change nothing after training, so a ``--set`` of any key not listed here
# is refused like a key the model does not read. ``section.*`` covers a section,
# ``data.options`` its own keys (``data.options.split_id``), ``data.test_sets`` its entries.
_INFERENCE_DATA = ("data.dataset", "data.root", "data.cache", "data.options", "data.num_workers")
_DEVICE = ("train.device", "train.amp", "train.channels_last")
COMMAND_READS: dict[str, tuple[str, ...]] = {
    # train.seed seeds the CUHK03 classic single-shot draws (engine/evaluator.py)
    "evaluate": (*_INFERENCE_DATA, "data.test_sets", *_DEVICE, "train.seed", "test.*"),
    "visualize": (*_INFERENCE_DATA, "data.test_sets", *_DEVICE, "test.batch_size", "test.flip", "test.metric",
                  "test.rerank", "test.k1", "test.k2", "test.lambda_value"),
    "extract": (*_INFERENCE_DATA, *_DEVICE, "test.batch_size", "test.flip"),
    "export": ("data.height", "data.width"),  # the exported graph's input size (as --height/--width)
}


def _command_reads(command: str, key: str) -> bool:
    """Whether ``command`` reads the dotted ``key`` (``data.test_sets[0].cache`` counts as ``data.test_sets``)."""
    if command == "fit":
        return True
    section, name = re.sub(r"\[\d+\]", "", key).split(".")[:2]
    reads = COMMAND_READS[command]
    return f"{section}.*" in reads or f"{section}.{name}" in reads


def _model_reads(cfg: Config, key: str) -> bool:
    return key not in READ_WHEN or READ_WHEN[key](cfg)


def unread_keys(cfg: Config, keys: typing.Iterable[str], command: str = "fit") -> list[str]:
    """The dotted ``keys`` that ``cfg``'s model (:data:`READ_WHEN`) or ``command`` (:data:`COMMAND_READS`) does not read."""
    return [k for k in keys if not _command_reads(command, k) or not _model_reads(cfg, k)]


def _refuse_unread(cfg: Config, keys_by_origin: Mapping[str, str], command: str = "fit") -> None:
    """UserError naming the first key (and where it was set) that ``command`` or ``cfg``'s model ignores."""
    unread = unread_keys(cfg, keys_by_origin, command)
    if not unread:
        return
    key = unread[0]
    if not _command_reads(command, key):
        why = (f"is not read by 'reid-train {command}' (it reads {', '.join(COMMAND_READS[command])}; the model, its "
               f"input size and normalisation come from the checkpoint, training keys change nothing after training)")
    else:
        why = f"is not read by model.name={cfg.model.name} (it changes nothing for this model)"
    raise UserError(f"{keys_by_origin[key]}: {key} {why}; remove it"
                    f"{' (unread here: ' + ', '.join(unread) + ')' if len(unread) > 1 else ''}")


# --------------------------------------------------------------------------- conversion


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of mappings" if item is dict or typing.get_origin(item) is dict else "a list of numbers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp) or "a mapping"


def _convert(value: Any, tp: Any, where: str, from_text: bool) -> Any:
    """``value`` as type ``tp``; ``from_text``: value is the raw text of ``--set``."""
    if from_text and tp is not str:
        try:
            value = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"{where}: expected {_type_name(tp)}, got {value!r}") from None
    bad = UserError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                number = float(value)
            except ValueError:
                raise bad from None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            raise bad
        if not math.isfinite(number):  # .nan / .inf / 1e999 would surface later as "loss is nan"
            raise UserError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if typing.get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)
        return [_convert(v, item, where, False) for v in value]
    if typing.get_origin(tp) is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise bad
        return dict(value)
    raise TypeError(f"unsupported config type {tp!r}")


def _check(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise UserError(f"{where}: {value!r} is not allowed; allowed values: {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise UserError(f"{where}: {value!r} must be {'>' if meta.get('lo_open') else '>='} {lo}")
    if hi is not None and value > hi:
        raise UserError(f"{where}: {value!r} must be <= {hi}")


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = _hints(Config)[section]
    return {f.name: f for f in dataclasses.fields(cls)}


def _unknown(kind: str, key: str, allowed: typing.Iterable[str], origin: str) -> UserError:
    return UserError(f"{origin}: unknown {kind} {key!r}; allowed: {', '.join(sorted(allowed))}")


def _set_value(cfg: Config, dotted: str, value: Any, origin: str, from_text: bool) -> None:
    parts = dotted.split(".")
    sections = [f.name for f in dataclasses.fields(Config)]
    if parts[0] not in sections:
        raise _unknown("config section" if len(parts) == 1 else "config key", dotted, [f"{s}.*" for s in sections], origin)
    if len(parts) < 2:
        raise UserError(f"{origin}: {dotted!r} is a section; set one of its keys, e.g. {dotted}.{next(iter(_section_fields(dotted)))}=...")
    section, key, rest = parts[0], parts[1], parts[2:]
    indexed = re.fullmatch(r"(\w+)\[(\d+)\]", key)  # one entry of a list of mappings: data.test_sets[0].cache
    if indexed:
        key = indexed.group(1)
    fields = _section_fields(section)
    if key not in fields:
        raise _unknown("config key", dotted, [f"{section}.{k}" for k in fields], origin)
    tp = _hints(type(getattr(cfg, section)))[key]
    where = f"{origin}: {dotted}"
    obj = getattr(cfg, section)
    if indexed:
        entries, index = copy.deepcopy(getattr(obj, key)), int(indexed.group(2))
        if typing.get_origin(tp) is not list or not rest:
            raise UserError(f"{where}: expected {section}.{key}[i].KEY=value for an entry of the list {section}.{key}")
        if index >= len(entries):
            raise UserError(f"{where}: {section}.{key} has {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} "
                            f"(0-based); set the whole list with --set '{section}.{key}=[...]'")
        node = entries[index]
        for p in rest[:-1]:
            node = node.setdefault(p, {})
        node[rest[-1]] = value  # text stays text; the entry is checked with the list (_validate)
        setattr(obj, key, entries)
        return
    if rest:  # free-form mapping keys, e.g. data.options.variant=detected
        if typing.get_origin(tp) is not dict:
            raise _unknown("config key", dotted, [f"{section}.{k}" for k in fields], origin)
        parsed = value  # text stays text: data.options values are typed by the adapter (reid_masks.datasets.options)
        mapping = copy.deepcopy(getattr(obj, key))
        node = mapping
        for p in rest[:-1]:
            node = node.setdefault(p, {})
        node[rest[-1]] = parsed
        setattr(obj, key, mapping)
        return
    converted = _convert(value, tp, where, from_text)
    if fields[key].metadata.get("optional") and isinstance(converted, str) and converted.strip().lower() in NO_VALUE:
        converted = ""  # YAML null, none: the key is off (not a file named "null")
    _check(converted, fields[key].metadata, where)
    setattr(obj, key, converted)


def _flatten(tree: Mapping[str, Any], origin: str) -> list[tuple[str, Any]]:
    """``{"solver": {"epochs": 4}}`` -> ``[("solver.epochs", 4)]`` (mappings stay whole)."""
    out = []
    sections = [f.name for f in dataclasses.fields(Config)]
    for section, body in tree.items():
        if section not in sections:
            raise _unknown("config section", str(section), sections, origin)
        if body is None:
            continue
        if not isinstance(body, Mapping):
            raise UserError(f"{origin}: section {section!r} must be a mapping of keys, got {body!r}")
        for key, value in body.items():
            out.append((f"{section}.{key}", value))
    return out


def _validate(cfg: Config, origin: str) -> Config:
    """Checks that involve more than one value or a list's length."""
    for key in ("mean", "std"):
        value = getattr(cfg.data, key)
        if len(value) != 3:
            raise UserError(f"{origin}: data.{key} must have 3 values (R, G, B), got {value}")
    if min(cfg.data.std) <= 0:
        raise UserError(f"{origin}: data.std values must be > 0, got {cfg.data.std}")
    try:  # the same check as reid-masks --dataset-option (names and values from the adapter)
        check_dataset_options(cfg.data.dataset, cfg.data.options)
    except UserError as exc:
        raise UserError(f"{origin}: data.dataset/data.options: {exc}") from None
    for i, entry in enumerate(cfg.data.test_sets):
        where = f"{origin}: data.test_sets[{i}]"
        unknown = set(entry) - set(TEST_SET_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(TEST_SET_KEYS)}")
        for key in ("dataset", "root"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise UserError(f"{where}: '{key}' is required (a string), e.g. {{dataset: occluded_reid, root: /data/Occluded_REID}}")
        if entry.get("cache") is None or str(entry["cache"]).strip().lower() in NO_VALUE:
            entry["cache"] = ""  # YAML null / none: this set has no mask cache
        if not isinstance(entry["cache"], str) or not isinstance(entry.get("options") or {}, Mapping):
            raise UserError(f"{where}: 'cache' must be a path string and 'options' a mapping")
        try:
            check_dataset_options(entry["dataset"], dict(entry.get("options") or {}))
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
    return cfg


def config_from_dict(tree: Mapping[str, Any], origin: str = "config") -> Config:
    """A Config from a nested mapping (a YAML file's content, a checkpoint's config)."""
    cfg = Config()
    for dotted, value in _flatten(tree, origin):
        _set_value(cfg, dotted, value, origin, from_text=False)
    return _validate(cfg, origin)


def _apply(cfg: Config, overrides: typing.Iterable[str], skip_indexed: bool = False) -> dict[str, str]:
    """Set ``section.key=value`` overrides on ``cfg`` in place (each value typed and range-checked
    per key); returns ``{key: "--set"}``. ``skip_indexed``: leave ``list[i].key`` entries unset."""
    keys = {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. solver.epochs=120")
        key, value = (t.strip() for t in item.split("=", 1))
        if not (skip_indexed and "[" in key):
            _set_value(cfg, key, value, "--set", from_text=True)
        keys[key] = "--set"
    return keys


def apply_overrides(cfg: Config, overrides: typing.Iterable[str], command: str = "fit") -> Config:
    """A copy of ``cfg`` with ``section.key=value`` overrides applied (values typed per key).

    ``command``: the ``reid-train`` command the config is for; a key it does not read
    (:data:`COMMAND_READS`), like a key the model does not read (:data:`READ_WHEN`), is refused.
    """
    cfg = copy.deepcopy(cfg)
    keys = _apply(cfg, overrides)
    _refuse_unread(cfg, keys, command)
    return _validate(cfg, "--set")


def check_overrides(overrides: typing.Iterable[str], command: str) -> None:
    """Refuse a bad ``--set`` of ``command`` before anything heavy (torch, a checkpoint) is loaded.

    Checks what needs no other value: the key exists, its value has the key's type and
    range, and ``command`` reads it. What depends on the final config (the model's keys,
    dataset options, list entries) is checked again when the config is loaded.
    """
    keys = _apply(Config(), overrides, skip_indexed=True)
    unread = [k for k in keys if not _command_reads(command, k)]
    if unread:
        _refuse_unread(Config(), {k: keys[k] for k in unread}, command)


def config_to_dict(cfg: Config, read_only: bool = False) -> dict[str, Any]:
    """Plain nested dict of builtins (JSON- and weights_only-safe), for checkpoints and logs.

    ``read_only``: leave out the keys ``cfg``'s model does not read, so the dict loads back
    with :func:`load_config` (a run's ``config.yaml``).
    """
    tree = dataclasses.asdict(cfg)
    if read_only:
        for dotted in unread_keys(cfg, READ_WHEN):
            section, key = dotted.split(".")
            del tree[section][key]
    return tree


# --------------------------------------------------------------------------- files


def packaged_configs() -> list[str]:
    """Names of the configs shipped in reid_train/configs."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name: str | Path, relative_to: Path | None = None) -> Path:
    """A config file path: an existing path (relative to ``relative_to`` first) or a packaged name."""
    text = str(name)
    candidates = []
    if relative_to is not None:
        candidates.append(relative_to / text)
    candidates.append(Path(text).expanduser())
    stem = text[:-5] if text.endswith(".yaml") else text
    candidates.append(CONFIG_DIR / f"{stem}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"config {text!r} not found: not a file and not a packaged config (packaged: {', '.join(packaged_configs())})")


class _DuplicateKey(Exception):
    """A key given twice in one YAML mapping (raised by :class:`_UniqueKeyLoader`)."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(key, line, first_line)
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping, at any depth (plain YAML
    keeps the last one silently). Keys brought in by a ``<<`` merge may be overridden, as YAML says."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1, first[key])
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> Any:
    """A config file's YAML content; not UTF-8, a repeated key or bad YAML is a one-line UserError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: byte 0x{data[exc.start]:02X} at offset {exc.start} is not UTF-8; "
                        f"save the config as UTF-8") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as dup:
        raise UserError(f"{path}:{dup.line}: duplicate key {dup.key!r} (first given at line {dup.first_line}); "
                        f"keep one") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None


def _read_tree(path: Path, seen: tuple[Path, ...] = (), origins: dict[str, str] | None = None) -> dict[str, Any]:
    """A YAML file's content merged over its ``_base_`` chain; ``origins`` gets ``key -> file`` of the
    file (nearest in the chain) that sets each key."""
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: _base_ cycle ({' -> '.join(str(p) for p in seen + (path,))})")
    tree = _read_yaml(path) or {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: a config must be a mapping of sections, got {type(tree).__name__}")
    base = tree.pop("_base_", None)
    # validate keys here so the message names the file that has the typo
    own = _flatten(tree, str(path))
    if base is None:
        merged = tree
    else:
        merged = _deep_merge(_read_tree(resolve_config_path(base, path.parent), seen + (path,), origins), tree)
    if origins is not None:
        origins.update({key: str(path) for key, _ in own})
    return merged


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(name: str | Path, overrides: typing.Iterable[str] = ()) -> Config:
    """Read a config file (path or packaged name) with its ``_base_`` chain, then ``--set`` overrides."""
    path = resolve_config_path(name)
    origins: dict[str, str] = {}
    cfg = apply_overrides(config_from_dict(_read_tree(path, origins=origins), str(path)), overrides)
    _refuse_unread(cfg, origins)
    return cfg


def config_header(path: str | Path) -> list[str]:
    """The leading comment block of a config file, without the '# ' (what the config is, the paper's numbers)."""
    lines = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return [ln for ln in lines if ln]
