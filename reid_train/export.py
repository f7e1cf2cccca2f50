"""``reid-train export``: a checkpoint's inference graph as ONNX or TorchScript, parity-checked.

The exported graph is what ``model.eval()(images)`` computes in PyTorch: images in, the
L2-normalised re-ID feature out. Input ``images`` is ``(N, 3, H, W)`` float32 (``N``
dynamic; ``H x W`` fixed at the config's ``data.height x data.width`` unless given), RGB,
resized to ``H x W`` as uint8 (bilinear, antialiased, no crop), scaled to [0, 1] and normalised
with the config's ``data.mean`` / ``data.std``; output ``features`` is ``(N, D)`` float32 with
unit L2 norm. ``flip=True`` bakes the evaluation's flip averaging into the graph
(``normalize(f(x) + f(flip(x)))``, what ``reid-train evaluate``/``extract`` use); off by
default, which halves the cost.

Both the preprocessing contract and the parity result are written to a sidecar JSON
(``<out>.json``) and embedded in the model file (ONNX ``metadata_props["reid_train"]``;
TorchScript extra file ``reid_train.json``).

ONNX uses torch's TorchScript-based exporter (``dynamo=False``): it needs only the
``onnx`` package, keeps the requested opset exactly and is fast; ``dynamo=True`` uses the
``torch.export``-based exporter instead (needs ``onnxscript``). The parity check runs
the exported file (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript) and PyTorch
on the same random inputs at batch sizes 1 and 3 (CPU, float32) and fails when the
largest absolute difference exceeds ``atol`` (default 1e-4 on unit-norm features).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import click
import numpy as np

from reid_masks.cliopts import FiniteFloatRange
from reid_masks.errors import UserError
from reid_masks.fileio import atomic_path, check_writable, remove_dead_temps, write_json_atomic

if TYPE_CHECKING:  # torch is imported when used, so that 'reid-train --help' stays fast
    import torch
    import torch.nn as nn

__all__ = ["export_model", "export_command", "ExportResult", "inference_graph", "parity_check", "read_export_metadata",
           "sidecar_path", "FORMATS", "DEFAULT_ATOL", "METADATA_KEY"]

FORMATS = ("onnx", "torchscript")
DEFAULT_ATOL = 1e-4
PARITY_BATCH_SIZES = (1, 3)
METADATA_KEY = "reid_train"
TORCHSCRIPT_META_FILE = "reid_train.json"
INPUT_NAME = "images"
OUTPUT_NAME = "features"


def inference_graph(model: nn.Module, flip: bool = False) -> nn.Module:
    """images -> L2-normalised feature of an eval-mode images-only model (optionally flip-averaged)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class InferenceGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            f = self.model(images).float()
            if flip:
                f = F.normalize(f + self.model(images.flip(-1)).float(), dim=1)
            return f

    return InferenceGraph().eval()


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and measured."""

    path: Path
    metadata_path: Path
    metadata: dict[str, Any]
    max_abs_diff: dict[int, float] = field(default_factory=dict)  # batch size -> max |exported - torch|
    atol: float = DEFAULT_ATOL


def default_out(checkpoint: Path, fmt: str) -> Path:
    """The export file beside the checkpoint: ``.onnx`` or ``.ts``."""
    return Path(checkpoint).with_suffix(".onnx" if fmt == "onnx" else ".ts")


def sidecar_path(out: str | Path) -> Path:
    """The metadata JSON written next to an exported model: ``<out>.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def _check_images_only(model: nn.Module, name: str) -> None:
    """UserError unless ``model`` is an images-only model (MMGA and FSA families)."""
    from reid_train.models import FSA, MMGA

    if getattr(model, "region_masks", None):  # MGRAN: its inputs are image x mask products
        raise UserError(f"export supports images-only models (mmga and fsa families); {name} needs masks at inference")
    if not isinstance(model, (MMGA, FSA)):
        raise UserError(f"export supports images-only models (mmga and fsa families); {name} is not one")


def _metadata(ckpt: dict[str, Any], cfg: Any, model: nn.Module, hw: tuple[int, int], fmt: str, flip: bool,
              opset: int | None, exporter: str | None, checkpoint: Path) -> dict[str, Any]:
    import torch

    d = cfg.data
    return {
        "format": "reid-train-export",
        "version": 1,
        "model": cfg.model.name,
        "backbone": cfg.model.backbone,
        "checkpoint": str(checkpoint),
        "epoch": int(ckpt.get("epoch", 0)),
        "dataset": (ckpt.get("dataset") or {}).get("name", d.dataset),
        "export_format": fmt,
        "exporter": exporter,
        "opset": opset,
        "torch_version": torch.__version__,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, hw[0], hw[1]],
            "dtype": "float32",
            "layout": "NCHW",
            "color": "RGB",
            "height": hw[0],
            "width": hw[1],
            "mean": [float(v) for v in d.mean],
            "std": [float(v) for v in d.std],
            "preprocessing": (f"decode as RGB (uint8), resize to {hw[0]}x{hw[1]} (bilinear, antialiased, on the uint8 "
                              "image, rounded to uint8; no crop), scale to [0, 1], subtract mean and divide by std per channel"),
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", int(model.feature_dim)],
            "dim": int(model.feature_dim),
            "dtype": "float32",
            "l2_normalized": True,
            "flip_averaged": flip,
            "metric": cfg.test.metric,
            "note": ("distance of two features: squared euclidean (= 2 - 2 cos) as in evaluation"
                     if cfg.test.metric == "euclidean" else "distance of two features: 1 - cos"),
        },
    }


def _export_onnx(graph: nn.Module, example: torch.Tensor, out: Path, opset: int, dynamo: bool) -> None:
    import torch

    try:
        import onnx  # noqa: F401  (the exporter and the metadata step need it)
    except ImportError:
        raise UserError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is chosen deliberately
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if dynamo:
            try:
                import onnxscript  # noqa: F401
            except ImportError:
                raise UserError("the dynamo ONNX exporter needs the 'onnxscript' package: pip install onnxscript") from None
            batch = torch.export.Dim("batch", min=1)
            program = torch.onnx.export(graph, (example,), None, dynamo=True, input_names=[INPUT_NAME],
                                        output_names=[OUTPUT_NAME], dynamic_shapes={"images": {0: batch}},
                                        opset_version=opset, verbose=False)
            program.save(str(out))
        else:
            torch.onnx.export(graph, (example,), str(out), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def _onnx_opset(path: Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return int(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0))


def _embed_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for prop in list(proto.metadata_props):
        if prop.key == METADATA_KEY:
            proto.metadata_props.remove(prop)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(path))


def _export_torchscript(graph: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still supported
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(graph, (example,), check_trace=False)


def _save_torchscript(module: torch.jit.ScriptModule, path: Path, metadata: dict[str, Any]) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(module, str(path), _extra_files={TORCHSCRIPT_META_FILE: json.dumps(metadata)})


def _runner(fmt: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A function batch (numpy) -> features (numpy) running the exported file."""
    import torch

    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("the ONNX parity check needs 'onnxruntime' (pip install onnxruntime), or pass --no-check") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def parity_check(graph: nn.Module, fmt: str, path: Path, hw: tuple[int, int],
                 batch_sizes: Sequence[int] = PARITY_BATCH_SIZES, seed: int = 0) -> dict[int, float]:
    """Max |exported - PyTorch| of the features for random inputs at each batch size."""
    import torch

    run = _runner(fmt, path)
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for b in batch_sizes:
        x = torch.randn(b, 3, hw[0], hw[1], generator=gen)
        with torch.no_grad():
            ref = graph(x).numpy()
        got = np.asarray(run(x.numpy()))
        if got.shape != ref.shape:
            raise UserError(f"{path}: exported model returned shape {got.shape} for batch {b}, PyTorch {ref.shape}")
        diffs[b] = float(np.abs(got.astype(np.float64) - ref).max())
    return diffs


def export_model(
    checkpoint: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    height: int | None = None,
    width: int | None = None,
    opset: int | None = None,
    *,
    flip: bool = False,
    dynamo: bool = False,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    overrides: Sequence[str] = (),
) -> ExportResult:
    """Export a checkpoint's inference graph to ``out`` and check it against PyTorch.

    ``fmt``: ``onnx`` or ``torchscript``; ``height``/``width`` default to the config's
    input size; ``opset`` defaults to 17 (18 with ``dynamo``, torch's ``torch.export``-based
    ONNX exporter, which writes opset >= 18 only); ``flip`` bakes in flip averaging.
    Raises UserError on a non-exportable model, a bad input size, or a parity difference
    above ``atol`` (then nothing is written).
    """
    import torch

    from reid_train.config import apply_overrides, config_from_dict
    from reid_train.engine.trainer import load_checkpoint, model_from_checkpoint

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    if opset is None:
        opset = 18 if dynamo else 17
    if fmt == "onnx" and dynamo and opset < 18:
        raise UserError(f"--opset {opset}: the dynamo ONNX exporter writes opset 18 or newer")
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else default_out(checkpoint, fmt)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = apply_overrides(config_from_dict(ckpt["config"], f"{checkpoint} config"), overrides, "export")
    model, cfg = model_from_checkpoint(ckpt, cfg, checkpoint)
    _check_images_only(model, cfg.model.name)
    model = model.float().eval()
    hw = (int(height or cfg.data.height), int(width or cfg.data.width))
    if min(hw) < 16:
        raise UserError(f"input size {hw[0]}x{hw[1]}: height and width must be >= 16")
    graph = inference_graph(model, flip=flip)
    example = torch.randn(2, 3, hw[0], hw[1], generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            graph(example)
    except (RuntimeError, ValueError) as exc:  # ValueError: FSA's attention is built for the training size
        raise UserError(f"{cfg.model.name} does not run on {hw[0]}x{hw[1]} inputs ({str(exc).splitlines()[0]}); "
                        f"use the training size {cfg.data.height}x{cfg.data.width} or a multiple of 16") from None

    exporter = ("torch.onnx dynamo" if dynamo else "torch.onnx torchscript (dynamo=False)") if fmt == "onnx" else "torch.jit.trace"
    metadata = _metadata(ckpt, cfg, model, hw, fmt, flip, opset if fmt == "onnx" else None, exporter, checkpoint)
    meta_path = sidecar_path(out)
    for name in (out.name, meta_path.name):  # temporaries of exports killed halfway (kill -9, OOM)
        remove_dead_temps(out.parent, name)
    with atomic_path(out) as tmp:
        with torch.no_grad():
            if fmt == "onnx":
                _export_onnx(graph, example, tmp, opset, dynamo)
                metadata["opset"] = _onnx_opset(tmp)
            else:
                traced = _export_torchscript(graph, example)
                _save_torchscript(traced, tmp, metadata)
        diffs: dict[int, float] = {}
        if check:
            diffs = parity_check(graph, fmt, tmp, hw)
            metadata["parity"] = {"device": "cpu", "dtype": "float32", "atol": atol,
                                  "max_abs_diff": {str(b): d for b, d in diffs.items()}}
            worst = max(diffs.values())
            if not worst <= atol:  # also catches NaN
                raise UserError(f"parity check failed: exported {fmt} differs from PyTorch by up to {worst:.3g} "
                                f"(tolerance {atol:g}; batch sizes {', '.join(map(str, diffs))}); nothing written to {out}")
        else:
            metadata["parity"] = None
        if fmt == "onnx":
            _embed_onnx_metadata(tmp, metadata)
        else:
            _save_torchscript(traced, tmp, metadata)
    write_json_atomic(meta_path, metadata)
    return ExportResult(out, meta_path, metadata, diffs, atol)


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata embedded in an exported ONNX or TorchScript file."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[METADATA_KEY])
    import torch

    extra = {TORCHSCRIPT_META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_META_FILE])


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--format", "fmt", default="onnx", show_default=True, type=click.Choice(FORMATS))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: next to the checkpoint, .onnx or .ts]; metadata goes to OUT.json.")
@click.option("--height", type=click.IntRange(16, 4096), default=None, help="Input height [default: data.height of the config].")
@click.option("--width", type=click.IntRange(16, 4096), default=None, help="Input width [default: data.width of the config].")
@click.option("--opset", default=None, type=click.IntRange(7, 30), help="ONNX opset [default: 17; 18 with --dynamo].")
@click.option("--flip", is_flag=True, help="Bake in flip averaging (the evaluation's features; twice the compute).")
@click.option("--dynamo", is_flag=True, help="Use torch's torch.export-based ONNX exporter (needs onnxscript).")
@click.option("--atol", default=DEFAULT_ATOL, show_default=True, type=FiniteFloatRange(0, None, min_open=True),
              help="Parity tolerance: max abs difference of the features.")
@click.option("--no-check", is_flag=True, help="Skip the parity check (e.g. without onnxruntime).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override data.height/data.width (as --height/--width); other keys are refused.")
def export_command(checkpoint: Path, fmt: str, out: Path | None, height: int | None, width: int | None, opset: int | None,
                   flip: bool, dynamo: bool, atol: float, no_check: bool, overrides: tuple[str, ...]) -> None:
    """Export the inference graph (images -> normalised feature, dynamic batch) to ONNX or TorchScript."""
    from reid_train.config import check_overrides
    from reid_train.runs import lock_if_run_folder

    check_overrides(overrides, "export")  # before torch is imported: a typo is refused at once
    check_writable(out or default_out(checkpoint, fmt))
    with lock_if_run_folder(out or default_out(checkpoint, fmt)):  # not into the folder of a running fit
        result = export_model(checkpoint, fmt, out, height, width, opset, flip=flip, dynamo=dynamo,
                              check=not no_check, atol=atol, overrides=overrides)
    meta = result.metadata
    inp = meta["input"]
    click.echo(f"wrote {result.path} ({fmt}, {meta['exporter']}): {meta['model']}/{meta['backbone']}, "
               f"input {INPUT_NAME} (batch, 3, {inp['height']}, {inp['width']}), output {OUTPUT_NAME} "
               f"(batch, {meta['output']['dim']}), L2-normalised{', flip-averaged' if flip else ''}")
    click.echo(f"preprocessing: RGB in [0, 1], mean {inp['mean']}, std {inp['std']}; metadata: {result.metadata_path}")
    if result.max_abs_diff:
        diffs = ", ".join(f"batch {b}: {d:.2e}" for b, d in result.max_abs_diff.items())
        click.echo(f"parity vs PyTorch (cpu float32): max abs diff {diffs} (tolerance {result.atol:g}) OK")
    else:
        click.echo("parity check skipped")
