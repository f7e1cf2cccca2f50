"""The optional detectron2 backend: Mask R-CNN R50-FPN (person masks) + Keypoint R-CNN R50-FPN.

detectron2 is not on the package registry; it is imported lazily inside
:class:`Detectron2Backend`, so the rest of ``reid_masks`` works without it. When missing,
the constructor raises a one-line :class:`~reid_masks.errors.UserError` saying how to
install it from source.

Models and weights
------------------
* masks: ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml`` (box AP 41.0, mask AP 37.2);
* keypoints: ``COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml`` (box AP 55.4, keypoint AP 65.5).

Either may be a model-zoo name (``model_zoo.get_config_file``) or the path of a user's
yaml. The config is ``get_cfg()`` + ``merge_from_file``, then ``MODEL.DEVICE``,
``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` and (optionally) ``INPUT.MIN_SIZE_TEST`` /
``INPUT.MAX_SIZE_TEST`` are set. The network is ``build_model(cfg)`` in eval mode and
the checkpoint is loaded with ``DetectionCheckpointer(model).load(file)``. Weights come
from the path the user gives, or else from detectron2's download cache (iopath's
``$FVCORE_CACHE``, default ``~/.torch/iopath_cache``, at the zoo URL's path) where an
online detectron2 run would have put them. Nothing is downloaded unless
``download=True``; a missing file is a UserError naming the URL and the directory. A
user run never falls back to random weights (detectron2's own loader would silently
start from scratch on an empty path); ``random_weights=True`` exists for tests.
detectron2's loader only logs keys it could not load; here a checkpoint that leaves
model parameters unloaded (missing keys or wrong shapes) is a UserError.

Inference: batched, never ``DefaultPredictor``
----------------------------------------------
``DefaultPredictor`` runs one image per call. :meth:`Detectron2Backend.predict` applies
the SAME preprocessing to every image of a batch (channel order per ``cfg.INPUT.FORMAT``:
our images are RGB, the zoo models want BGR; ``ResizeShortestEdge([MIN_SIZE_TEST] * 2,
MAX_SIZE_TEST)`` from ``detectron2.data.transforms``; a float32 CHW tensor) and calls
``model([{"image", "height", "width"}, ...])`` once per model for the whole batch.
detectron2 pads the batch itself and post-processes each result back to the original
``height x width`` (``detector_postprocess``).

Instances: persons first, then the budget
-----------------------------------------
Both backends follow one rule (``base.PERSON_RULE``): the person class alone goes through
the score threshold and NMS, and only then the top ``detections_per_img`` (detectron2's
``TEST.DETECTIONS_PER_IMAGE``, 100) are kept. detectron2's own ``fast_rcnn_inference``
cuts the top-k over ALL 80 classes, so a car or a handbag can take a person's slot; here
the box predictor's ``predict_probs`` is wrapped to multiply every non-person class
column by 0 (person and background untouched), so no other class passes the threshold
and the cut sees persons only. Person scores, boxes, NMS (class-wise, person is class 0)
and the mask / keypoint heads are unchanged, so the result equals ``DefaultPredictor``'s
persons whenever its top-k kept all of them, i.e. whenever fewer than
``detections_per_img`` detections of all classes pass the threshold; otherwise it has
the persons ``DefaultPredictor`` dropped for other classes.

Outputs
-------
Only COCO's person class (contiguous id 0) is kept, sorted by score. detectron2 returns
masks already pasted and thresholded at 0.5 (bool, image resolution); they become 0/1
float32. torchvision's masks are soft probabilities, but ``reid_masks.derive`` binarizes
every mask at 0.5, so both backends yield the same kind of person mask.

Keypoints come from the second model, matched to the mask model's instances by box IoU
with the shared greedy one-to-one :func:`reid_masks.backends.base.match_instances` (IoU >=
``match_iou``); an unmatched instance gets all-zero keypoints. The keypoint model runs
at half the score threshold, since its detections are only match candidates.
Keypoint scores: detectron2's ``pred_keypoints[..., 2]`` is a spatial-softmax score (its
own visualiser draws keypoints above 0.05), not comparable with the torchvision backend's
``sigmoid(heatmap logit)`` that ``derive``'s 0.3 keypoint threshold assumes. We therefore
report ``sigmoid(peak logit)`` of each keypoint's heatmap (``pred_keypoint_heatmaps``,
56x56; torchvision takes the peak of the bicubic-upsampled map, equal up to the
interpolation's overshoot). Were the heatmaps absent, detectron2's own score is kept
and a warning logged.

Input size
----------
``min_size=None`` keeps the config's test size (800, max 1333: the zoo's evaluation
setting, and what ``DefaultPredictor`` uses), unlike the torchvision backend's 256/768.
Re-ID crops gain little from that ~10x upscale; see the torchvision backend's docstring
for the cost/benefit, and pass ``min_size=256`` (``--min-size``) for speed. The size used
is recorded per model in the provenance and shown by ``reid-masks inspect``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional
from urllib.parse import urlparse

import numpy as np
import torch

from reid_masks.backends.base import DEFAULT_DETECTIONS_PER_IMG, PERSON_RULE, Instances, attach_keypoints, forward_by_size, padded_size, parse_device
from reid_masks.errors import UserError
from reid_masks.weights import weights_record

log = logging.getLogger(__name__)

__all__ = ["Detectron2Backend", "PERSON_CLASS", "INSTALL_HINT", "detectron2_cache_dir", "import_detectron2", "persons_before_topk"]

PERSON_CLASS = 0  # COCO "person" in detectron2's contiguous ids
INSTALL_HINT = "detectron2 is not installed: install it from source: pip install 'git+https://github.com/facebookresearch/detectron2.git'"
DEFAULT_MASK_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
DEFAULT_KEYPOINT_CONFIG = "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml"


def import_detectron2() -> SimpleNamespace:
    """The detectron2 pieces we use, or a one-line UserError (not installed / broken install)."""
    try:
        import detectron2
        import detectron2.data.transforms as T
        from detectron2 import model_zoo
        from detectron2.checkpoint import DetectionCheckpointer
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
    except ModuleNotFoundError as e:
        if e.name == "detectron2":
            raise UserError(INSTALL_HINT) from None
        raise UserError(f"detectron2 is installed but cannot be imported ({e}); reinstall it from source for this torch {torch.__version__}") from None
    except ImportError as e:  # e.g. a compiled extension built against another torch
        raise UserError(f"detectron2 is installed but cannot be imported ({e}); reinstall it from source for this torch {torch.__version__}") from None
    return SimpleNamespace(
        version=getattr(detectron2, "__version__", "unknown"), T=T, model_zoo=model_zoo,
        DetectionCheckpointer=DetectionCheckpointer, get_cfg=get_cfg, build_model=build_model,
    )


def detectron2_cache_dir() -> Path:
    """Where detectron2 (through iopath) caches downloaded checkpoints."""
    try:
        from iopath.common.file_io import get_cache_dir

        return Path(get_cache_dir())
    except ImportError:
        return Path(os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache")))




def persons_before_topk(model: Any, where: str) -> None:
    """Make ``model``'s box predictor(s) score every class but person 0, so the top-k cut counts persons only.

    Wraps ``roi_heads.box_predictor.predict_probs`` (one predictor, or each stage's in a
    cascade), which detectron2's ``FastRCNNOutputLayers.inference`` calls before
    ``fast_rcnn_inference``; the columns are multiplied, so a non-finite row stays
    non-finite and is dropped exactly as before.
    """
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    predictors = list(predictor) if isinstance(predictor, torch.nn.ModuleList) else [predictor]
    if not all(callable(getattr(p, "predict_probs", None)) for p in predictors):
        raise UserError(f"{where}: the model has no roi_heads.box_predictor.predict_probs, so persons cannot be kept before the per-image top-k")
    for p in predictors:
        original = p.predict_probs

        def predict_probs(predictions: Any, proposals: Any, _original: Any = original) -> tuple[torch.Tensor, ...]:
            out = []
            for probs in _original(predictions, proposals):
                keep = torch.zeros(probs.shape[-1], dtype=probs.dtype, device=probs.device)
                keep[PERSON_CLASS] = 1
                keep[-1] = 1  # background
                out.append(probs * keep)
            return tuple(out)

        p.predict_probs = predict_probs


@dataclass
class _Model:
    """One built detectron2 model and how its inputs are prepared."""

    what: str
    config: str  # as given (zoo name or path)
    config_file: str
    cfg: Any
    model: Any
    resize: Any  # detectron2.data.transforms.ResizeShortestEdge
    input_format: str
    weights: Optional[str]  # local file (or URL when downloading), None with random weights
    url: Optional[str]


class Detectron2Backend:
    """Batched person masks + keypoints with detectron2's model-zoo Mask R-CNN and Keypoint R-CNN.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        mask_config / keypoint_config: model-zoo names or yaml paths.
        mask_weights / keypoint_weights: checkpoint files (default: detectron2's cache).
        random_weights: untrained models (tests only; logged and recorded).
        score_threshold: minimum person score of a returned instance.
        min_size / max_size: override ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``.
        download: let detectron2 fetch missing zoo weights (needs internet).
        match_iou: minimum box IoU to attach a keypoint instance to a mask instance.
        detections_per_img: most person instances per image (``TEST.DETECTIONS_PER_IMAGE``),
            counted over persons only (see the module doc).
    """

    name = "detectron2"

    def __init__(
        self,
        device: str = "cpu",
        mask_config: str = DEFAULT_MASK_CONFIG,
        keypoint_config: str = DEFAULT_KEYPOINT_CONFIG,
        mask_weights: str | os.PathLike | None = None,
        keypoint_weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        score_threshold: float = 0.5,
        min_size: Optional[int] = None,
        max_size: Optional[int] = None,
        download: bool = False,
        match_iou: float = 0.5,
        detections_per_img: int = DEFAULT_DETECTIONS_PER_IMG,
        **unknown: Any,
    ) -> None:
        if unknown:
            known = "device, mask_config, keypoint_config, mask_weights, keypoint_weights, random_weights, score_threshold, min_size, max_size, download, match_iou, detections_per_img"
            raise UserError(f"detectron2 backend: unknown option(s) {', '.join(sorted(unknown))} (known: {known})")
        if random_weights and (mask_weights is not None or keypoint_weights is not None):
            raise UserError("random weights and a weights file were both requested; choose one")
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise UserError(f"score threshold must be in [0, 1], got {score_threshold}")
        if (min_size is not None and int(min_size) < 1) or (max_size is not None and int(max_size) < 1):
            raise UserError(f"bad input size: min_size={min_size} max_size={max_size}")
        if int(detections_per_img) < 1:
            raise UserError(f"detections per image must be >= 1, got {detections_per_img}")
        self.device = parse_device(device, "detectron2 backend")
        self.d2 = import_detectron2()
        self.random_weights = bool(random_weights)
        self.score_threshold = float(score_threshold)
        self.keypoint_score_threshold = self.score_threshold / 2
        self.min_size = None if min_size is None else int(min_size)
        self.max_size = None if max_size is None else int(max_size)
        self.download = bool(download)
        self.match_iou = float(match_iou)
        self.detections_per_img = int(detections_per_img)
        self._warned_scores = False
        self._provenance: Optional[dict[str, Any]] = None
        if self.random_weights:
            log.warning("detectron2 backend: RANDOM weights (tests only): masks and keypoints are meaningless")

        # resolve configs and weights of both models before building either: a missing file fails fast
        mask_cfg = self._config("Mask R-CNN", mask_config, self.score_threshold, "MASK_ON")
        kp_cfg = self._config("Keypoint R-CNN", keypoint_config, self.keypoint_score_threshold, "KEYPOINT_ON")
        mask_w = None if self.random_weights else self._weights("Mask R-CNN", mask_config, mask_cfg[2], mask_weights, "--mask-weights")
        kp_w = None if self.random_weights else self._weights("Keypoint R-CNN", keypoint_config, kp_cfg[2], keypoint_weights, "--keypoint-weights")
        self.mask = self._build("Mask R-CNN", mask_config, mask_cfg, mask_w)
        self.keypoint = self._build("Keypoint R-CNN", keypoint_config, kp_cfg, kp_w)

    # ------------------------------------------------------------------ setup

    def _config(self, what: str, config: str, score_threshold: float, head_flag: str) -> tuple[Any, str, bool]:
        """(frozen cfg, config file, is a zoo config) for one model."""
        if os.path.isfile(config):
            path, is_zoo = str(config), False
        else:
            try:
                path, is_zoo = self.d2.model_zoo.get_config_file(config), True
            except RuntimeError as e:
                raise UserError(f"{what} config {config!r}: not a file and not in detectron2's model zoo ({e})") from None
        cfg = self.d2.get_cfg()
        try:
            cfg.merge_from_file(path)
        except Exception as e:  # yaml errors, unknown keys
            raise UserError(f"{what} config {path}: cannot be read by detectron2 ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if not getattr(cfg.MODEL, head_flag, False):
            raise UserError(f"{what} config {path}: MODEL.{head_flag} is off, so it predicts no {'masks' if head_flag == 'MASK_ON' else 'keypoints'}")
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise UserError(f"{what} config {path}: INPUT.FORMAT {cfg.INPUT.FORMAT!r} is not RGB or BGR")
        cfg.MODEL.DEVICE = str(self.device)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)
        cfg.TEST.DETECTIONS_PER_IMAGE = self.detections_per_img
        if self.min_size is not None:
            cfg.INPUT.MIN_SIZE_TEST = self.min_size
        if self.max_size is not None:
            cfg.INPUT.MAX_SIZE_TEST = self.max_size
        return cfg, path, is_zoo

    def _weights(self, what: str, config: str, is_zoo: bool, path: str | os.PathLike | None, option: str) -> tuple[str, Optional[str]]:
        """(file or URL to load, zoo URL or None); a missing file is a UserError saying what to fetch."""
        url = None
        if is_zoo:
            try:
                url = self.d2.model_zoo.get_checkpoint_url(config)
            except RuntimeError:
                url = None
        if path is not None:
            p = Path(path).expanduser()
            if not p.is_file():
                fetch = f"; download {url} and pass its path" if url else ""
                raise UserError(f"{what} weights file not found: {p} (given with {option}){fetch}")
            return str(p), url
        if url is None:
            raise UserError(f"{what}: config {config} has no model-zoo checkpoint; pass its weights file with {option}")
        cached = detectron2_cache_dir() / urlparse(url).path.lstrip("/")
        if cached.is_file():
            return str(cached), url
        if self.download:
            log.info("%s: detectron2 will download %s into %s", what, url, cached.parent)
            return url, url
        raise UserError(
            f"{what} weights not found: {cached.name} is not in detectron2's cache {cached.parent}; download {url} "
            f"into that directory, or pass the file's path with {option} (or allow downloading with download=True)"
        )

    def _build(self, what: str, config: str, cfg_info: tuple[Any, str, bool], weights: Optional[tuple[str, Optional[str]]]) -> _Model:
        cfg, path, _ = cfg_info
        if weights is not None:
            cfg.MODEL.WEIGHTS = weights[0]
        cfg.freeze()
        model = self.d2.build_model(cfg)
        model.eval()
        persons_before_topk(model, f"{what} config {path}")
        if weights is not None:
            self._load(what, model, weights[0])
            log.info("loaded %s weights from %s", what, weights[0])
        resize = self.d2.T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        return _Model(what, config, path, cfg, model, resize, cfg.INPUT.FORMAT, weights[0] if weights else None, weights[1] if weights else None)

    def _load(self, what: str, model: Any, weights: str) -> None:
        """``DetectionCheckpointer(model).load(weights)``, failing on parameters it could not load."""
        checkpointer = self.d2.DetectionCheckpointer(model)
        incompatible: list[Any] = []
        original = getattr(checkpointer, "_log_incompatible_keys", None)
        if original is not None:  # fvcore reports what did not load only through this (logging) hook

            def capture(keys: Any) -> None:
                incompatible.append(keys)
                original(keys)

            checkpointer._log_incompatible_keys = capture
        try:
            checkpointer.load(weights)
        except Exception as e:  # unreadable file, failed download
            raise UserError(f"cannot load {what} weights {weights}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        for keys in incompatible:
            shapes = [k[0] if isinstance(k, (tuple, list)) else k for k in (getattr(keys, "incorrect_shapes", []) or [])]
            missing = [k for k in (getattr(keys, "missing_keys", []) or []) if k not in shapes]
            if missing or shapes:
                first = ", ".join((missing + shapes)[:3])
                raise UserError(
                    f"{what} weights {weights} do not fit the model of {getattr(model, '__class__', type(model)).__name__}: "
                    f"{len(missing)} parameters missing, {len(shapes)} with wrong shapes (first: {first})"
                )

    # ------------------------------------------------------------------ provenance

    def provenance(self) -> dict[str, Any]:
        """JSON-able record of what produced the results (weight hashes computed once)."""
        if self._provenance is None:
            models = {}
            for key, m in (("mask", self.mask), ("keypoint", self.keypoint)):
                cached = detectron2_cache_dir() / urlparse(m.url).path.lstrip("/") if m.url else None
                local = m.weights if m.weights and os.path.isfile(m.weights) else None
                if local is None and m.url and m.weights == m.url:  # downloaded by detectron2 into its cache
                    local = str(cached) if cached is not None and cached.is_file() else None
                record = weights_record(local, cached, m.url)
                models[key] = {
                    "config": m.config,
                    "config_file": m.config_file,
                    "weights": record["path"],  # the file loaded (absolute); the zoo URL only when it is the zoo file
                    **record,
                    "score_threshold": float(m.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST),
                    "min_size_test": int(m.cfg.INPUT.MIN_SIZE_TEST),
                    "max_size_test": int(m.cfg.INPUT.MAX_SIZE_TEST),
                    "input_format": m.input_format,
                }
            self._provenance = {
                "backend": self.name,
                "models": models,
                "random_weights": self.random_weights,
                "person_class": PERSON_CLASS,
                "score_threshold": self.score_threshold,
                "keypoint_score_threshold": self.keypoint_score_threshold,
                "keypoint_match": "greedy box IoU",
                "match_iou": self.match_iou,
                "instances": PERSON_RULE,
                "detections_per_img": self.detections_per_img,
                "keypoint_score": "sigmoid(heatmap peak logit)",
                "mask": "detectron2 pasted masks thresholded at 0.5, as 0/1",
                "min_size": self.min_size,
                "max_size": self.max_size,
                "detectron2_version": self.d2.version,
                "torch_version": torch.__version__,
                "device": str(self.device),
            }
        return json.loads(json.dumps(self._provenance))

    # ------------------------------------------------------------------ inference

    def _inputs(self, m: _Model, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """DefaultPredictor's preprocessing for each image of the batch (ours are RGB)."""
        inputs = []
        for image in images:
            a = np.asarray(image)
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
                raise ValueError(f"expected an RGB uint8 HxWx3 image, got shape {a.shape} dtype {a.dtype}")
            if m.input_format == "BGR":
                a = a[:, :, ::-1]
            a = np.ascontiguousarray(a)
            h, w = a.shape[:2]
            resized = m.resize.get_transform(a).apply_image(a)
            tensor = torch.as_tensor(np.ascontiguousarray(resized).astype("float32").transpose(2, 0, 1))
            inputs.append({"image": tensor, "height": h, "width": w})
        return inputs

    def forward_raw(self, images: list[np.ndarray]) -> tuple[list[Any], list[Any]]:
        """The two models' detectron2 outputs for a batch: one call per model and padded size."""
        mask_in = self._inputs(self.mask, images)
        same = (self.mask.input_format, self.mask.cfg.INPUT.MIN_SIZE_TEST, self.mask.cfg.INPUT.MAX_SIZE_TEST) == (
            self.keypoint.input_format, self.keypoint.cfg.INPUT.MIN_SIZE_TEST, self.keypoint.cfg.INPUT.MAX_SIZE_TEST)
        kp_in = mask_in if same else self._inputs(self.keypoint, images)
        with torch.inference_mode():
            mask_out = forward_by_size(self.mask.model, mask_in, self._padded_sizes(self.mask.model, mask_in))
            kp_out = forward_by_size(self.keypoint.model, kp_in, self._padded_sizes(self.keypoint.model, kp_in))
        return mask_out, kp_out

    @staticmethod
    def _padded_sizes(model: Any, inputs: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """The size detectron2 pads each resized image to alone (``ImageList.from_tensors``'s rule)."""
        backbone = getattr(model, "backbone", None)
        constraints = getattr(backbone, "padding_constraints", None) or {}
        divisor = int(constraints.get("size_divisibility", getattr(backbone, "size_divisibility", 0)) or 0)
        square = int(constraints.get("square_size", 0) or 0)
        sizes = [(square, square) if square > 0 else tuple(x["image"].shape[-2:]) for x in inputs]
        return [padded_size(h, w, divisor if divisor > 1 else 0) for h, w in sizes]

    def predict(self, images: list[np.ndarray]) -> list[Instances]:
        """Person instances for each image of the batch, score-sorted, at image resolution."""
        if len(images) == 0:
            return []
        mask_out, kp_out = self.forward_raw(images)
        results = []
        for image, mo, ko in zip(images, mask_out, kp_out):
            h, w = int(image.shape[0]), int(image.shape[1])
            m = self._persons(mo["instances"])
            k = self._persons(ko["instances"])
            boxes, scores = m.pred_boxes.tensor.numpy().astype(np.float32).reshape(-1, 4), m.scores.numpy().astype(np.float32)
            if m.has("pred_masks"):
                masks = m.pred_masks.float().numpy().astype(np.float32).reshape(-1, h, w)
            else:
                masks = np.zeros((len(scores), h, w), np.float32)
            if len(k) and len(scores):
                keypoints = attach_keypoints(boxes, k.pred_boxes.tensor.numpy(), self._keypoints(k), self.match_iou)
            else:
                keypoints = np.zeros((len(scores), 17, 3), np.float32)
            results.append(Instances(boxes, scores, masks, keypoints))
        return results

    @staticmethod
    def _persons(instances: Any) -> Any:
        """Person instances on the CPU, highest score first."""
        inst = instances.to("cpu")
        inst = inst[inst.pred_classes == PERSON_CLASS]
        if len(inst) > 1:
            inst = inst[torch.argsort(inst.scores, descending=True, stable=True)]
        return inst

    def _keypoints(self, inst: Any) -> np.ndarray:
        """(n, 17, 3) x, y, score with score = sigmoid(heatmap peak logit) (see the module doc)."""
        kp = inst.pred_keypoints.float().clone()
        if inst.has("pred_keypoint_heatmaps"):
            hm = inst.pred_keypoint_heatmaps.float()
            kp[..., 2] = torch.sigmoid(hm.flatten(2).max(-1).values)
        elif not self._warned_scores:
            log.warning("detectron2 backend: no keypoint heatmaps in the output; keypoint scores are detectron2's softmax scores")
            self._warned_scores = True
        return kp.numpy().astype(np.float32)

    def __repr__(self) -> str:
        return (
            f"Detectron2Backend(device={str(self.device)!r}, mask_config={self.mask.config!r}, keypoint_config={self.keypoint.config!r}, "
            f"score_threshold={self.score_threshold}, min_size={self.mask.cfg.INPUT.MIN_SIZE_TEST}, random_weights={self.random_weights})"
        )
