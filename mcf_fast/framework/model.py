"""The fitted framework (:class:`MCFModel`), its :class:`Prediction`, and its bundle file.

A model bundle is one zip file holding everything a fitted :class:`MCFModel` needs.

Members (the layout is described in docs/formats.md, "Model bundles"):

- ``model.json``: ``{"format": "mcf_fast.model", "format_version": 1, "mcf_fast_version",
  "config", "history", "stain", "network", "members"}``;
- ``templates.json``: the final template set (the template-set format);
- ``filter_bank.npz``: the detector's filter bank (rebuilt from the templates when absent);
- ``unet.pt``: the U-Net's ``state_dict`` (absent for a model without a network).

The file is written atomically; reading checks the format name and version first and
raises :class:`~mcf_fast.errors.FormatError` naming the file for anything unexpected.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcf_fast._validate import check_version
from mcf_fast.config import MCFConfig, config_to_dict
from mcf_fast.errors import FormatError, InputError, describe
from mcf_fast.io.images import as_rgb_uint8, atomic_path, read_image
from mcf_fast.ops.instances import TABLE_DTYPE, instance_labels, label_options, nucleus_table
from mcf_fast.ops.tissue import is_blank

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "MCFModel",
    "Prediction",
    "bundle_mpp",
    "load_bundle",
    "save_bundle",
]

#: value of ``format`` in model.json
BUNDLE_FORMAT = "mcf_fast.model"
#: the version this module writes and reads
BUNDLE_VERSION = 1
_BANK = "filter_bank.npz"


def detector_class(detector_cls: type | None = None) -> type:
    """`detector_cls`, or :class:`~mcf_fast.detection.detector.Detector` when None.

    A detector class is built as ``cls(templates, config.detection, device=...)`` and
    loaded as ``cls.load(templates, bank_path, config.detection, device=...)``; it has
    ``detect``, ``with_templates`` and optionally ``save_bank``.
    """
    if detector_cls is not None:
        return detector_cls
    from mcf_fast.detection.detector import Detector

    return Detector


# ---------------------------------------------------------------------------- prediction
@dataclass(frozen=True, eq=False)
class Prediction:
    """What :meth:`MCFModel.predict` returns for one image.

    Attributes
    ----------
    probability : ndarray, shape (H, W), float32
        Nucleus probability p1 (the detection response when the model has no network).
    mask : ndarray, shape (H, W), bool
        Nucleus pixels (``labels > 0``).
    labels : ndarray, shape (H, W), int32
        0 background, 1..M one id per nucleus.
    centres : ndarray, shape (M, 2), float64
        Centroid (y, x) of each instance, in label order.
    table : structured ndarray of :data:`~mcf_fast.ops.instances.TABLE_DTYPE`, (M,)
        label, y, x, area and mean grey intensity of each nucleus.
    detected_centres : ndarray, shape (N, 2), int64
        The detector's centres (y, x), before segmentation; empty when the detector did
        not run (see ``MCFModel.predict(detect=...)``).
    """

    probability: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    table: np.ndarray
    detected_centres: np.ndarray


def _empty_prediction(shape: tuple[int, int]) -> Prediction:
    """The prediction for an image without tissue: no nuclei."""
    labels = np.zeros(shape, np.int32)
    return Prediction(
        probability=np.zeros(shape, np.float32),
        mask=labels > 0,
        labels=labels,
        centres=np.zeros((0, 2)),
        table=np.zeros(0, TABLE_DTYPE),
        detected_centres=np.zeros((0, 2), np.int64),
    )


# ---------------------------------------------------------------------------- the model
class MCFModel:
    """A fitted framework: detector, U-Net, templates, stain normaliser and history.

    Attributes
    ----------
    config : MCFConfig
    templates : TemplateSet
        The final template set (the user's plus those the residual added).
    detector : Detector
    net : torch.nn.Module or None
        None for the "-seg." ablation (predictions from the detection alone).
    stain : stain normaliser or None
    history : list of dict
        Per round: templates before it, templates added, detections, losses, seconds.
    """

    def __init__(
        self,
        config: MCFConfig,
        templates,
        detector,
        net,
        *,
        stain=None,
        history: list[dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.templates = templates
        self.detector = detector
        self.net = net
        self.stain = stain
        self.history = list(history or [])

    def __repr__(self) -> str:
        rounds = len(self.history)
        return (
            f"MCFModel({len(self.templates)} templates, {rounds} round(s), "
            f"network={'yes' if self.net is not None else 'no'})"
        )

    @property
    def device(self) -> str:
        return self.config.segmentation.device

    def predict(
        self, image: np.ndarray | str | os.PathLike, *, detect: bool | None = None
    ) -> Prediction:
        """Segment one image.

        Parameters
        ----------
        image : ndarray (H, W, 3) or path
        detect : bool, optional
            Run the detector too, to fill ``Prediction.detected_centres``.  By default
            it runs only when the labels need it: without a network, or with
            ``instance_seeds="centres"``; otherwise ``detected_centres`` is empty.

        Returns
        -------
        Prediction
        """
        from mcf_fast.segmentation.train import predict_maps

        seg = self.config.segmentation
        if isinstance(image, (str, os.PathLike)):
            img = read_image(image)
        else:
            img = as_rgb_uint8(image)
        if is_blank(img):  # no tissue, no nuclei (see mcf_fast.ops.tissue)
            return _empty_prediction(img.shape[:2])
        if self.stain is not None:
            img = as_rgb_uint8(self.stain.transform(img))
        needed = self.net is None or seg.instance_seeds == "centres"
        det = self.detector.detect(img) if (needed or detect) else None
        centres = (
            np.asarray(det.centres, np.int64).reshape(-1, 2)
            if det is not None
            else np.zeros((0, 2), np.int64)
        )
        energy = None
        if self.net is not None:
            prob, energy = predict_maps(
                self.net,
                img,
                device=seg.device,
                tile=seg.tile,
                flips=seg.tta_flips,
                precision=seg.precision,
            )
            fg = prob
        else:
            prob = np.asarray(det.response, np.float32)
            fg = (np.asarray(det.pseudo_mask) == 1).astype(np.float32)
        labels = instance_labels(
            fg, centres=centres, energy=energy, **label_options(seg, energy=energy is not None)
        )
        table = nucleus_table(labels, img)
        return Prediction(
            probability=prob.astype(np.float32, copy=False),
            mask=labels > 0,
            labels=labels,
            centres=np.stack([table["y"], table["x"]], axis=1) if len(table) else np.zeros((0, 2)),
            table=table if len(table) else np.zeros(0, TABLE_DTYPE),
            detected_centres=centres,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model bundle (see :func:`save_bundle`)."""
        return save_bundle(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str = "cpu", detector_cls: type | None = None
    ) -> MCFModel:
        """Read a bundle written by :meth:`save`.

        `detector_cls` rebuilds the detector (see :func:`detector_class`).

        Raises
        ------
        FormatError
            If the file is not a bundle or has an unknown format version.
        """
        return load_bundle(path, device=device, detector_cls=detector_cls)


# ---------------------------------------------------------------------------- bundles


def save_bundle(model: MCFModel, path: str | os.PathLike) -> Path:
    """Write ``model`` to a bundle file at ``path`` (conventionally ``*.mcf``).

    Returns
    -------
    Path
        ``path``.
    """
    import torch

    from mcf_fast import __version__

    final = Path(path)
    if final.is_dir():
        raise InputError(f"{final}: is a folder; a model bundle is one file")
    members: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tpath = Path(tmpdir) / "templates.json"
        model.templates.save(tpath)
        members["templates.json"] = tpath.read_bytes()
        save_bank = getattr(model.detector, "save_bank", None)
        if save_bank is not None:
            bpath = Path(tmpdir) / _BANK
            save_bank(bpath)
            if bpath.is_file():
                members[_BANK] = bpath.read_bytes()
    network = None
    if model.net is not None:
        buf = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in model.net.state_dict().items()}
        torch.save(state, buf)
        members["unet.pt"] = buf.getvalue()
        network = {"class": "UNet", **dict(getattr(model.net, "hparams", {}))}
    doc = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "mcf_fast_version": __version__,
        "config": config_to_dict(model.config),
        "history": model.history,
        "stain": model.stain.to_dict() if model.stain is not None else None,
        "network": network,
        "members": sorted(members),
        # microns per pixel of the images the model was fitted on (None: unknown)
        "mpp": model.templates.meta.get("mpp"),
    }
    with atomic_path(final) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("model.json", json.dumps(doc, indent=1, sort_keys=True))
            for name in sorted(members):
                zf.writestr(name, members[name])
    return final


def _read_doc(zf: zipfile.ZipFile, p: Path) -> dict[str, Any]:
    try:
        doc = json.loads(zf.read("model.json").decode("utf-8"))
    except KeyError:
        raise FormatError(f"{p}: not a model bundle (no model.json inside)") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{p}: model.json is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise FormatError(f'{p}: not a model bundle (expected "format": "{BUNDLE_FORMAT}")')
    check_version(
        doc.get("format_version"),
        BUNDLE_VERSION,
        f"{p}: model bundle format version",
        hint="; refit the model or use a matching mcf_fast",
    )
    return doc


def _load_weights(raw: bytes) -> dict[str, Any]:
    """The U-Net's state dict from ``unet.pt``'s bytes: tensors only, never code."""
    import pickle

    import torch

    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        # torch's message suggests weights_only=False, which would run the file's code
        raise ValueError(f"not a weights file of tensors ({type(exc).__name__})") from exc


def bundle_mpp(path: str | os.PathLike) -> float | None:
    """The microns per pixel a bundle was fitted at (None when unknown), read cheaply.

    Raises
    ------
    FormatError
        If the file is not a model bundle.
    """
    p = Path(path)
    if not zipfile.is_zipfile(p):
        raise FormatError(f"{p}: not a model bundle (not a zip file)")
    with zipfile.ZipFile(p) as zf:
        mpp = _read_doc(zf, p).get("mpp")
    return float(mpp) if mpp is not None else None


def load_bundle(
    path: str | os.PathLike, *, device: str = "cpu", detector_cls: type | None = None
) -> MCFModel:
    """Read a bundle written by :func:`save_bundle`.

    Parameters
    ----------
    path : str or PathLike
    device : str
        Where the network runs ("cpu", "cuda", "cuda:1"); recorded in the model's config.
    detector_cls : class, optional
        The detector to rebuild (:func:`detector_class`); the package's Detector by default.

    Returns
    -------
    MCFModel

    Raises
    ------
    InputError
        If the file does not exist.
    FormatError
        If it is not a bundle, has an unknown format version or a damaged member.
    """
    import dataclasses

    import torch

    from mcf_fast.io.templates import TemplateSet
    from mcf_fast.segmentation.unet import UNet

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such model bundle")
    if not zipfile.is_zipfile(p):
        raise FormatError(f"{p}: not a model bundle (not a zip file)")
    with zipfile.ZipFile(p) as zf, tempfile.TemporaryDirectory() as tmpdir:
        doc = _read_doc(zf, p)
        names = set(zf.namelist())
        member = "model.json"
        try:
            config = MCFConfig.from_dict(doc["config"])
            config = dataclasses.replace(
                config, segmentation=dataclasses.replace(config.segmentation, device=device)
            )
            member = "templates.json"
            tpath = Path(tmpdir) / member
            tpath.write_bytes(zf.read(member))
            templates = TemplateSet.load(tpath)
            Detector = detector_class(detector_cls)
            if _BANK in names:
                member = _BANK
                bpath = Path(tmpdir) / _BANK
                bpath.write_bytes(zf.read(_BANK))
                detector = Detector.load(templates, bpath, config.detection, device=device)
            else:
                detector = Detector(templates, config.detection, device=device)
            net = None
            if doc.get("network"):
                member = "model.json"
                hp = {k: v for k, v in doc["network"].items() if k != "class"}
                net = UNet(**hp)
                member = "unet.pt"
                state = _load_weights(zf.read(member))
                net.load_state_dict(state)
                net.to(torch.device(device)).eval()
            stain = None
            if doc.get("stain") is not None:
                from mcf_fast.ops.stain import normalizer_from_dict

                member = "model.json"
                stain = normalizer_from_dict(doc["stain"])
        except (
            FormatError,
            KeyError,
            TypeError,
            ValueError,
            RuntimeError,
            zipfile.BadZipFile,
        ) as exc:
            # the reason, without the temporary path a member was read from
            reason = str(exc) if isinstance(exc, FormatError) else describe(exc)
            reason = reason.replace(f"{Path(tmpdir) / member}: ", "")
            raise FormatError(f"{p}: damaged model bundle ({member}: {reason})") from exc
    return MCFModel(config, templates, detector, net, stain=stain, history=doc.get("history", []))
