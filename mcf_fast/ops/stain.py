"""Stain normalisation of H&E images: Vahadane (through staintools) or a built-in Macenko.

The paper normalises every image with Vahadane's method (staintools' ``VahadaneNormalizer``).
staintools and its sparse-coding backend are an optional extra (``pip install
mcf-fast[stain]``, which pulls ``staintools`` and ``spams-bin``); without it mcf_fast uses
its own implementation of Macenko's method (Macenko et al., ISBI 2009):

1. optical density ``OD = -log(max(I, 1) / 255)`` per channel;
2. tissue pixels: OD vector length above ``od_threshold`` (transparent background out;
   ours: Macenko's per-channel test drops faint eosin, whose red OD is tiny);
3. the plane of the two leading eigenvectors of the tissue ODs' second-moment matrix;
4. the angle of each tissue OD inside that plane; the stain vectors are the plane's
   directions at the ``angle_percentile`` and ``100 - angle_percentile`` percentiles
   (robust extremes); hematoxylin is the one with the larger red OD;
5. concentrations by least squares against the two stain vectors (negatives clipped to 0),
   and each stain's ``concentration_percentile`` percentile as its maximum.

Fitting records the reference image's stain matrix and maximum concentrations; transforming
an image separates its own stains, rescales its concentrations so that their maxima match
the reference's and recombines them with the reference's stain matrix.  Both fitted arrays
round-trip through :meth:`StainNormalizer.to_dict` / :func:`normalizer_from_dict`, so a model
bundle can record the normaliser it was fitted with.

The *source* side (the image's own stain matrix and maximum concentrations) is estimated
per image by default.  On the tiles of one slide that gives each tile its own estimate:
unstable on tiles with little tissue, and colour jumps between neighbours.
:meth:`StainNormalizer.source_state` estimates it once from the pooled pixels of several
images (a JSON-ready dict), and ``transform(image, source=state)`` uses that fixed source
instead of estimating one per image.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from mcf_fast._validate import check_version
from mcf_fast.errors import ConfigError, FormatError, InputError
from mcf_fast.io.images import as_rgb_uint8

__all__ = [
    "StainNormalizer",
    "normalizer_from_dict",
    "staintools_available",
    "optical_density",
    "macenko_stain_matrix",
    "stain_concentrations",
]

#: version of the dict written by :meth:`StainNormalizer.to_dict`
FORMAT_VERSION = 1
METHODS = ("auto", "vahadane", "macenko")
#: fewest tissue pixels from which stain vectors are estimated
MIN_TISSUE_PIXELS = 100
#: most pooled pixels :meth:`StainNormalizer.source_state` estimates from (a fixed subsample)
MAX_SOURCE_PIXELS = 2_000_000


def staintools_available() -> bool:
    """True when the optional ``staintools`` package (the ``[stain]`` extra) is importable."""
    return importlib.util.find_spec("staintools") is not None


def optical_density(image: np.ndarray) -> np.ndarray:
    """Optical density of an RGB uint8 image.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8

    Returns
    -------
    ndarray, shape (H * W, 3), float64
        ``-log(max(I, 1) / 255)``: 0 for white, about 5.5 for black.
    """
    flat = image.reshape(-1, 3).astype(np.float64)
    np.maximum(flat, 1.0, out=flat)
    return -np.log(flat / 255.0)


def macenko_stain_matrix(
    image: np.ndarray,
    *,
    od_threshold: float = 0.15,
    angle_percentile: float = 1.0,
) -> np.ndarray:
    """The two stain vectors of an H&E image by Macenko's method.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    od_threshold : float
        A pixel is tissue when the length of its optical-density vector exceeds this.
    angle_percentile : float
        Percentile (0..50) of the in-plane angles taken as the robust extreme directions.

    Returns
    -------
    ndarray, shape (2, 3), float64
        Unit rows with non-negative entries: hematoxylin first, then eosin.

    Raises
    ------
    InputError
        If fewer than ``MIN_TISSUE_PIXELS`` pixels are tissue (a blank image).
    """
    od = optical_density(image)
    tissue = od[np.linalg.norm(od, axis=1) > od_threshold]
    if tissue.shape[0] < MIN_TISSUE_PIXELS:
        raise InputError(
            f"image: only {tissue.shape[0]} tissue pixels (optical density > {od_threshold}); "
            f"need at least {MIN_TISSUE_PIXELS} to estimate stain vectors"
        )
    # The plane through the origin that best fits the ODs: leading eigenvectors of the
    # second-moment matrix (Macenko's SVD of the OD matrix, without the mean removed).
    _, vecs = np.linalg.eigh(tissue.T @ tissue)
    plane = vecs[:, [2, 1]]  # eigh sorts ascending
    # Orient the axes so that stain ODs (all positive) have positive coordinates on the
    # leading axis, which keeps the angles in a half-plane.
    if plane[:, 0].sum() < 0:
        plane[:, 0] = -plane[:, 0]
    if plane[:, 1].sum() < 0:
        plane[:, 1] = -plane[:, 1]
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [angle_percentile, 100.0 - angle_percentile])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2])
    # Extreme directions can dip slightly below zero on a channel; stains absorb, so clip.
    np.maximum(stains, 0.0, out=stains)
    stains /= np.maximum(np.linalg.norm(stains, axis=1, keepdims=True), 1e-12)
    if stains[0, 0] < stains[1, 0]:  # hematoxylin absorbs more red than eosin
        stains = stains[::-1].copy()
    return stains


def stain_concentrations(image: np.ndarray, stain_matrix: np.ndarray) -> np.ndarray:
    """Per-pixel stain concentrations by least squares, negatives clipped to zero.

    Parameters
    ----------
    image : ndarray, shape (H, W, 3), uint8
    stain_matrix : ndarray, shape (2, 3)

    Returns
    -------
    ndarray, shape (H * W, 2), float64
    """
    od = optical_density(image)
    conc = np.linalg.lstsq(stain_matrix.T, od.T, rcond=None)[0].T
    np.maximum(conc, 0.0, out=conc)
    return conc


class StainNormalizer:
    """Map H&E images onto the stain appearance of a reference image.

    Parameters
    ----------
    method : {"auto", "vahadane", "macenko"}
        "vahadane" needs the ``[stain]`` extra (staintools); "macenko" is built in; "auto"
        picks Vahadane when staintools is installed, else Macenko.  After :meth:`fit`,
        :attr:`method` holds the method actually used.
    od_threshold, angle_percentile, concentration_percentile : float
        Parameters of the built-in Macenko method (see the module docstring).

    Raises
    ------
    ConfigError
        For an unknown method or out-of-range parameters, or "vahadane" without staintools.

    Examples
    --------
    >>> norm = StainNormalizer("macenko").fit(reference)          # doctest: +SKIP
    >>> out = norm.transform(image)                               # doctest: +SKIP
    >>> same = normalizer_from_dict(norm.to_dict())               # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "auto",
        *,
        od_threshold: float = 0.15,
        angle_percentile: float = 1.0,
        concentration_percentile: float = 99.0,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"StainNormalizer.method = {method!r}: expected one of {METHODS}")
        if method == "vahadane" and not staintools_available():
            raise ConfigError(
                "StainNormalizer.method = 'vahadane' needs staintools: "
                "pip install 'mcf-fast[stain]' (or use method='macenko')"
            )
        if not 0.0 < od_threshold < 5.0:
            raise ConfigError(
                f"StainNormalizer.od_threshold = {od_threshold!r}: expected a number in (0, 5)"
            )
        if not 0.0 <= angle_percentile < 50.0:
            raise ConfigError(
                f"StainNormalizer.angle_percentile = {angle_percentile!r}: expected [0, 50)"
            )
        if not 50.0 < concentration_percentile <= 100.0:
            raise ConfigError(
                "StainNormalizer.concentration_percentile = "
                f"{concentration_percentile!r}: expected (50, 100]"
            )
        if method == "auto":
            method = "vahadane" if staintools_available() else "macenko"
        self.method: str = method
        self.od_threshold = float(od_threshold)
        self.angle_percentile = float(angle_percentile)
        self.concentration_percentile = float(concentration_percentile)
        self.stain_matrix: np.ndarray | None = None
        self.max_concentrations: np.ndarray | None = None
        self._backend: Any = None

    # ------------------------------------------------------------------ helpers
    @property
    def fitted(self) -> bool:
        """True once :meth:`fit` ran or the state was loaded."""
        return self.stain_matrix is not None

    def _stains(self, image: np.ndarray) -> np.ndarray:
        if self.method == "vahadane":
            from staintools.miscellaneous.exceptions import TissueMaskException
            from staintools.stain_extraction.vahadane_stain_extractor import (
                VahadaneStainExtractor,
            )

            try:  # staintools writes into its input: hand it a copy
                stains = VahadaneStainExtractor.get_stain_matrix(image.copy())
            except TissueMaskException as exc:
                raise InputError(f"image: no tissue to estimate stain vectors ({exc})") from exc
            return np.asarray(stains, dtype=np.float64)
        return macenko_stain_matrix(
            image, od_threshold=self.od_threshold, angle_percentile=self.angle_percentile
        )

    def _concentrations(self, image: np.ndarray, stains: np.ndarray) -> np.ndarray:
        if self.method == "vahadane":
            from staintools.miscellaneous.get_concentrations import get_concentrations

            return np.asarray(get_concentrations(image.copy(), stains), dtype=np.float64)
        return stain_concentrations(image, stains)

    def _max_conc(self, conc: np.ndarray) -> np.ndarray:
        m = np.percentile(conc, self.concentration_percentile, axis=0)
        return np.maximum(m, 1e-6)

    # --------------------------------------------------------------------- API
    def fit(self, reference_image: np.ndarray) -> StainNormalizer:
        """Record the stain matrix and maximum concentrations of a reference image.

        Parameters
        ----------
        reference_image : ndarray, shape (H, W, 3)
            Any image :func:`~mcf_fast.io.images.as_rgb_uint8` accepts.

        Returns
        -------
        StainNormalizer
            ``self``.

        Raises
        ------
        InputError
            If the reference has too little tissue to estimate stain vectors.
        """
        ref = as_rgb_uint8(reference_image, name="reference_image")
        stains = self._stains(ref)
        conc = self._concentrations(ref, stains)
        self.stain_matrix = stains
        self.max_concentrations = self._max_conc(conc)
        return self

    def source_state(
        self, images: Sequence[np.ndarray], *, max_pixels: int = MAX_SOURCE_PIXELS
    ) -> dict[str, Any]:
        """Estimate the source stains once, from the pooled pixels of several images.

        The stain matrix and maximum concentrations that :meth:`transform` would estimate
        per image, estimated instead from all pixels of `images` together (e.g. a few tissue
        tiles of one slide), so that every image can be transformed with the same source.

        Parameters
        ----------
        images : sequence of ndarray, shape (H, W, 3)
            Any images :func:`~mcf_fast.io.images.as_rgb_uint8` accepts; their sizes may
            differ.
        max_pixels : int
            When the images hold more pixels, a fixed random subsample of this many (seed 0,
            in pixel order) is used.

        Returns
        -------
        dict
            ``{"method", "stain_matrix" (2 x 3 list), "max_concentrations" (2 list)}``,
            JSON-ready; pass it to ``transform(image, source=...)``.  Estimated from one
            image, ``transform(image, source=state)`` equals ``transform(image)``.

        Raises
        ------
        InputError
            If `images` is not a non-empty sequence of RGB images, `max_pixels` is below
            ``MIN_TISSUE_PIXELS``, or the pooled pixels hold too little tissue.

        Examples
        --------
        >>> src = norm.source_state([tile_a, tile_b, tile_c])     # doctest: +SKIP
        >>> out = norm.transform(tile_d, source=src)              # doctest: +SKIP
        """
        if isinstance(images, (np.ndarray, str, bytes)) or not isinstance(images, Sequence):
            raise InputError(
                "images: expected a sequence (list or tuple) of RGB images, got "
                f"{type(images).__name__}"
            )
        if len(images) == 0:
            raise InputError("images: expected at least one image, got an empty sequence")
        if (
            isinstance(max_pixels, bool)
            or not isinstance(max_pixels, (int, np.integer))
            or max_pixels < MIN_TISSUE_PIXELS
        ):
            raise InputError(
                f"max_pixels = {max_pixels!r}: expected an integer >= {MIN_TISSUE_PIXELS}"
            )
        pixels = np.concatenate(
            [as_rgb_uint8(im, name=f"images[{i}]").reshape(-1, 3) for i, im in enumerate(images)]
        )
        if len(pixels) > max_pixels:
            keep = np.random.default_rng(0).choice(len(pixels), int(max_pixels), replace=False)
            pixels = pixels[np.sort(keep)]
        pooled = np.ascontiguousarray(pixels.reshape(-1, 1, 3))  # one tall 1-pixel-wide image
        try:
            stains = self._stains(pooled)
        except InputError as exc:
            raise InputError(
                f"images: the {len(images)} image(s) hold too little tissue to estimate the "
                f"source stains ({exc})"
            ) from exc
        conc = self._concentrations(pooled, stains)
        return {
            "method": self.method,
            "stain_matrix": np.asarray(stains, np.float64).tolist(),
            "max_concentrations": self._max_conc(conc).tolist(),
        }

    def _check_source(self, source: Any) -> tuple[np.ndarray, np.ndarray]:
        """The (stain matrix, max concentrations) of a :meth:`source_state` dict."""
        if not isinstance(source, dict):
            raise InputError(
                "source: expected a dict from StainNormalizer.source_state(), got "
                f"{type(source).__name__}"
            )
        method = source.get("method", self.method)
        if method != self.method:
            raise InputError(
                f"source: estimated with method {method!r}, but this normaliser uses "
                f"{self.method!r}; estimate it with this normaliser's source_state()"
            )
        try:
            stains = np.asarray(source["stain_matrix"], dtype=np.float64)
            maxc = np.asarray(source["max_concentrations"], dtype=np.float64)
        except KeyError as exc:
            raise InputError(
                f"source: missing key {exc}; expected 'stain_matrix' and 'max_concentrations' "
                "(from StainNormalizer.source_state())"
            ) from None
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"source: stain_matrix / max_concentrations are not numeric ({exc})"
            ) from exc
        if (
            stains.shape != (2, 3)
            or maxc.shape != (2,)
            or not (np.all(np.isfinite(stains)) and np.all(np.isfinite(maxc)))
            or not np.all(maxc > 0)
        ):
            raise InputError(
                "source: expected a finite (2, 3) stain_matrix and (2,) positive "
                f"max_concentrations, got shapes {stains.shape} and {maxc.shape}"
            )
        return stains, maxc

    def transform(self, image: np.ndarray, source: dict[str, Any] | None = None) -> np.ndarray:
        """Re-render an image with the reference's stains.

        Parameters
        ----------
        image : ndarray, shape (H, W, 3)
        source : dict, optional
            A fixed source from :meth:`source_state`: its stain matrix separates the image's
            stains and its maximum concentrations are mapped onto the reference's, with no
            per-image estimate (so the same pixel gives the same output in every image).
            None estimates both from `image` itself.

        Returns
        -------
        ndarray, shape (H, W, 3), uint8
            Without `source`, an image with almost no tissue (too few pixels to separate its
            stains) is returned unchanged; with `source`, every image is transformed.

        Raises
        ------
        InputError
            If the normaliser is not fitted, for a bad image, or for a `source` that is not
            a :meth:`source_state` dict of this method.
        """
        if not self.fitted:
            raise InputError("StainNormalizer.transform: call fit() (or load a fitted one) first")
        img = as_rgb_uint8(image, name="image")
        if source is not None:
            stains, src_max = self._check_source(source)
            conc = self._concentrations(img, stains)
        else:
            try:
                stains = self._stains(img)
            except InputError:
                return img.copy()
            conc = self._concentrations(img, stains)
            src_max = self._max_conc(conc)
        conc *= self.max_concentrations / src_max
        od = conc @ self.stain_matrix
        out = 255.0 * np.exp(-od)
        return np.clip(np.round(out), 0, 255).astype(np.uint8).reshape(img.shape)

    def fit_transform(self, image: np.ndarray) -> np.ndarray:
        """Fit on `image` and return it transformed (mostly useful for tests)."""
        return self.fit(image).transform(image)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description of the fitted normaliser.

        Raises
        ------
        InputError
            If the normaliser is not fitted.
        """
        if not self.fitted:
            raise InputError("StainNormalizer.to_dict: the normaliser is not fitted")
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "od_threshold": self.od_threshold,
            "angle_percentile": self.angle_percentile,
            "concentration_percentile": self.concentration_percentile,
            "stain_matrix": np.asarray(self.stain_matrix).tolist(),
            "max_concentrations": np.asarray(self.max_concentrations).tolist(),
        }

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"StainNormalizer(method={self.method!r}, {state})"


def normalizer_from_dict(data: dict[str, Any]) -> StainNormalizer:
    """Rebuild a fitted :class:`StainNormalizer` from :meth:`StainNormalizer.to_dict` output.

    Raises
    ------
    FormatError
        For an unknown format version, missing keys or arrays of the wrong shape.
    ConfigError
        If the recorded method is Vahadane and staintools is not installed.
    """
    if not isinstance(data, dict):
        raise FormatError(f"stain normaliser: expected a dict, got {type(data).__name__}")
    check_version(data.get("format_version"), FORMAT_VERSION, "stain normaliser: format_version")
    try:
        method = data["method"]
        stains = np.asarray(data["stain_matrix"], dtype=np.float64)
        maxc = np.asarray(data["max_concentrations"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"stain normaliser: missing or invalid field ({exc})") from exc
    if method not in ("vahadane", "macenko"):
        raise FormatError(f"stain normaliser: unknown method {method!r}")
    if (
        stains.shape != (2, 3)
        or maxc.shape != (2,)
        or not (np.all(np.isfinite(stains)) and np.all(np.isfinite(maxc)))
    ):
        raise FormatError(
            "stain normaliser: expected a finite (2, 3) stain_matrix and (2,) "
            f"max_concentrations, got {stains.shape} and {maxc.shape}"
        )
    norm = StainNormalizer(
        method,
        od_threshold=float(data.get("od_threshold", 0.15)),
        angle_percentile=float(data.get("angle_percentile", 1.0)),
        concentration_percentile=float(data.get("concentration_percentile", 99.0)),
    )
    norm.stain_matrix = stains
    norm.max_concentrations = maxc
    return norm
