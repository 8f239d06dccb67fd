"""Input quality control: decide, before and after the model, whether an input is one the bundle may judge.

Three stages, each finding with a named reason, the measured value and the limit it crossed:

- **header** (DICOM only): a lateral ViewPosition sent to a frontal bundle is refused; a BodyPartExamined that
  is present and not a chest is refused; a patient younger than the bundle's ``min_age_years`` is flagged.
  The age is read as a number and compared, never logged or reported (the finding names the limit, not the age).
- **pixels**: blank or near-constant images, saturated or dark-clipped fractions, low dynamic range, low
  entropy, no spatial structure (noise), extreme aspect ratios and (X-ray) a CT slice's two-class histogram,
  measured on the image without its letterbox bars. Limits are plain data: ``PIXEL_LIMITS`` per modality,
  overridden by the manifest's ``quality.pixel``.
- **modality check** (lungedge.runtime.modality_check; bundles whose manifest holds ``quality.modality_check``):
  an image that looks like the other modality of the pack (an X-ray sent to a CT bundle) is refused.
- **orientation check** (lungedge.runtime.orientation_check; bundles whose manifest holds
  ``quality.orientation_check``): an image with inverted grey levels or turned by a quarter or half turn is
  refused.
- **lung_fields** (lungedge.runtime.lung_fields; X-ray pipelines with a lung segmenter): the lung mask must show
  two fields side by side, with bands fitted on in-distribution films and stored in the classifier's manifest.
- **model** (lungedge.runtime.ood): Mahalanobis distance of the pooled features and energy of the logits,
  with thresholds calibrated per artifact; segmenters add a plausible-area band.

The outcome is ``accept``, ``warn`` or ``refuse``. A refused input is *not assessed*: it gets no label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from lungedge.runtime.errors import BundleError

STATUSES = ("accept", "warn", "refuse")
NOT_ASSESSED = "not assessed"

# ViewPosition codes of lateral projections (DICOM CID 7484 and common vendor spellings).
LATERAL_VIEWS = ("LL", "RL", "LAT", "L", "LATERAL", "LLAT", "RLAT")
# A BodyPartExamined that contains one of these is a chest.
CHEST_PARTS = ("CHEST", "THORAX", "LUNG", "THORACIC")

# Refuse X-rays whose histogram splits into two flat classes as cleanly as a CT slice's air and tissue (Otsu's
# separability, ``two_class_separability``). Fitted on the dev pack's X-ray train and val films only (1,471; no
# test, CT or other out-of-scope image) by the OOD thresholds' rule (``lungedge.runtime.ood.calibrate_per_group``:
# the pooled 99% quantile, 0.813, relaxed until every source accepts 99%, here kermany-pediatric's 379 of 382 at
# 0.84505), rounded up at the fourth decimal. A bundle may override it in quality.pixel.
TWO_CLASS_LIMIT = 0.8451

# Pixel limits per modality on a 0..1 scale of the image's range (display values / intensity_max; HU through
# the window below). "refuse" and "warn" limits; a check whose limit is None is off. Chosen from the dev pack's
# in-distribution images (python -m lungedge.benchmarks.qc prints their spread), with a wide margin.
PIXEL_LIMITS = {
    "xray": {
        "std": {"min_refuse": 0.02, "min_warn": 0.04},
        "saturated_fraction": {"max_warn": 0.25, "max_refuse": 0.5},
        "dark_fraction": {"max_warn": 0.4, "max_refuse": 0.7},
        "dynamic_range": {"min_refuse": 0.08, "min_warn": 0.18},
        "entropy_bits": {"min_refuse": 2.0, "min_warn": 4.0},
        "neighbour_correlation": {"min_refuse": 0.5, "min_warn": 0.75},
        "aspect_ratio": {"max_warn": 2.5, "max_refuse": 3.5},
        "two_class_separability": {"max_refuse": TWO_CLASS_LIMIT},
    },
    "ct": {
        "std": {"min_refuse": 0.02, "min_warn": 0.04},
        "saturated_fraction": {"max_warn": 0.75, "max_refuse": 0.9},
        "dark_fraction": {"max_warn": 0.75, "max_refuse": 0.9},
        "dynamic_range": {"min_refuse": 0.08, "min_warn": 0.18},
        "entropy_bits": {"min_refuse": 1.5, "min_warn": 3.0},
        "neighbour_correlation": {"min_refuse": 0.5, "min_warn": 0.75},
        "aspect_ratio": {"max_warn": 2.5, "max_refuse": 3.5},
    },
}
# Named reason of each pixel measurement (what a clinician reads) when it crosses a limit.
PIXEL_REASONS = {
    "std": "blank_or_constant",
    "saturated_fraction": "saturated",
    "dark_fraction": "clipped_dark",
    "dynamic_range": "low_dynamic_range",
    "entropy_bits": "low_entropy",
    "neighbour_correlation": "no_spatial_structure",
    "aspect_ratio": "extreme_aspect_ratio",
    "two_class_separability": "ct_like_histogram",
}
PIXEL_WORDS = {
    "std": "pixel standard deviation",
    "saturated_fraction": "fraction of saturated pixels",
    "dark_fraction": "fraction of pixels clipped to black",
    "dynamic_range": "1-99 percentile range",
    "entropy_bits": "histogram entropy (bits)",
    "neighbour_correlation": "correlation of neighbouring pixels",
    "aspect_ratio": "aspect ratio",
    "two_class_separability": "two-class separability of the histogram (a CT slice's air and tissue)",
}
# Refuse a file whose pixels are in colour beyond this fraction (coloured burned-in marks stay far below it).
MAX_COLOUR_FRACTION = 0.05
# HU window mapped to 0..1 for the pixel statistics of CT in Hounsfield units.
HU_WINDOW = (-1024.0, 1024.0)
# Pixel statistics run on a copy whose longer side is at most this (strided, no interpolation): the checks
# look for gross faults, and their cost must stay small beside a compressed model's inference.
STATS_SIDE = 64
# Saturated / clipped to black: the top / bottom 1/256 of the range (for 8-bit images exactly 255 / 0).


@dataclass(frozen=True)
class Finding:
    """One check that crossed a limit: stage, named reason, warn/refuse, the measured value and the limit."""

    stage: str
    reason: str
    status: str
    message: str
    value: Optional[float] = None
    limit: Optional[float] = None

    def to_dict(self):
        return {"stage": self.stage, "reason": self.reason, "status": self.status, "message": self.message,
                "value": self.value, "limit": self.limit}


@dataclass
class Assessment:
    """The quality verdict of one input, built stage by stage (header, pixels, model)."""

    findings: List[Finding] = field(default_factory=list)
    scores: Dict[str, float] = field(default_factory=dict)
    thresholds: Dict[str, dict] = field(default_factory=dict)
    ood: Dict[str, object] = field(default_factory=dict)
    lung_fields: Dict[str, object] = field(default_factory=dict)  # X-ray pipelines with a lung segmenter

    @property
    def status(self):
        worst = max((STATUSES.index(f.status) for f in self.findings), default=0)
        return STATUSES[worst]

    @property
    def refused(self):
        return self.status == "refuse"

    def add(self, finding):
        self.findings.append(finding)

    def summary(self):
        """One line for people: the reasons of the worst status ("" when accepted)."""
        worst = [f for f in self.findings if f.status == self.status]
        return "; ".join(f.message for f in worst) if self.status != "accept" else ""

    def to_dict(self):
        out = {"status": self.status, "reasons": [f.to_dict() for f in self.findings],
               "scores": {k: _num(v) for k, v in self.scores.items()}, "thresholds": self.thresholds,
               "ood": dict(self.ood), "summary": self.summary()}
        if self.lung_fields:
            out["lung_fields"] = dict(self.lung_fields)
        return out


def _num(value):
    return None if value is None else round(float(value), 6)


# ------------------------------------------------------------------------------------------------ header

def header_findings(meta, spec, modality):
    """Findings from the reader's header fields (DICOM); none for formats without a header."""
    out = []
    view = (meta.get("view_position") or "").strip().upper()
    if modality == "xray" and spec.get("view", "frontal") == "frontal" and view in LATERAL_VIEWS:
        out.append(Finding("header", "lateral_view", "refuse",
                           f"lateral view (ViewPosition {view}); this bundle judges frontal chest films only"))
    part = (meta.get("body_part") or "").strip().upper()
    if part and not any(p in part for p in CHEST_PARTS):
        out.append(Finding("header", "not_chest", "refuse",
                           f"BodyPartExamined is {part[:32]}, not a chest"))
    min_age = spec.get("min_age_years")
    age = meta.get("patient_age_years")
    if min_age is not None and age is not None and float(age) < float(min_age):
        # The limit is reported, the age never.
        out.append(Finding("header", "below_min_age", "warn",
                           f"patient younger than the bundle's minimum age of {min_age:g} years",
                           limit=float(min_age)))
    return out


# ------------------------------------------------------------------------------------------------ pixels

def content_region(image):
    """The image without its letterbox bars: border rows and columns that are constant at the image's minimum
    (black padding; a bright band is content, e.g. saturation). Returns (array, (y0, y1, x0, x1))."""
    row_max, col_max = image.max(axis=1), image.max(axis=0)
    low = image.min()
    rows, cols = row_max > low, col_max > low  # a row whose maximum is the minimum is all minimum
    if not rows.any():  # constant image
        return image, (0, image.shape[0], 0, image.shape[1])
    y0, y1 = int(rows.argmax()), len(rows) - int(rows[::-1].argmax())
    x0, x1 = int(cols.argmax()), len(cols) - int(cols[::-1].argmax())
    content = image[y0:y1, x0:x1]
    if content.min() == content.max():  # a flat object on a flat background: no bars, the whole image
        return image, (0, image.shape[0], 0, image.shape[1])
    return content, (y0, y1, x0, x1)


def unit_scale(image, meta, hu_window=HU_WINDOW):
    """The image on 0..1: display values over intensity_max, HU through ``hu_window`` (low, high); clipped."""
    a = np.asarray(image, np.float32)
    if meta.get("unit") == "HU":
        low, high = hu_window
    else:
        low, high = 0.0, float(meta.get("intensity_max") or max(float(a.max(initial=0.0)), 1.0))
    out = (a - np.float32(low)) * np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def stats_content(image):
    """(content, h, w): the content region of the strided small copy the pixel checks read, in the image's own
    values, and the content's size in the full image."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    step = max(1, int(np.ceil(max(a.shape) / float(STATS_SIDE))))
    content, (y0, y1, x0, x1) = content_region(a[::step, ::step])
    return content, (y1 - y0) * step, (x1 - x0) * step


def stats_image(image, meta, hu_window=HU_WINDOW):
    """(u, h, w): ``stats_content`` on 0..1 (HU through ``hu_window``)."""
    content, h, w = stats_content(image)
    return unit_scale(content, meta, hu_window), h, w


def pixel_scores(image, meta, stats=None):
    """The pixel measurements of one 2-D image (dict name -> value), on its content region (``stats``: the
    image's ``stats_image`` when already computed)."""
    u, h, w = stats if stats is not None else stats_image(image, meta)
    levels = (u * np.float32(255.999)).astype(np.uint8)  # 256 bins over the range; bin 255 holds 1.0
    hist = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    cdf = np.cumsum(p)
    p1, p99 = np.searchsorted(cdf, 0.01) / 256.0, (np.searchsorted(cdf, 0.99) + 1) / 256.0
    nz = p[p > 0]
    return {"std": float(u.std(dtype=np.float64)),
            "saturated_fraction": float(p[255]),
            "dark_fraction": float(p[0]),
            "dynamic_range": float(p99 - p1),
            "entropy_bits": float(abs((nz * np.log2(nz)).sum())),
            "neighbour_correlation": _neighbour_correlation(u),
            "aspect_ratio": float(max(h, w) / max(1, min(h, w))),
            "two_class_separability": two_class_separability(hist)}


def two_class_separability(hist):
    """Otsu's separability of a 256-bin histogram: the best two-class between-class variance over the total
    variance (0..1; 1 for two flat classes).

    A CT slice shows air-filled lung and soft tissue, each nearly flat in any window, so its histogram splits
    into two classes almost perfectly; a projection radiograph sums attenuation along each ray, a continuum of
    grey. The ratio does not change when a window's level or width moves the grey values linearly.
    """
    p = np.asarray(hist, np.float64)
    total = p.sum()
    if total <= 0:
        return 0.0
    p = p / total
    levels = np.arange(len(p), dtype=np.float64)
    mean = float(p @ levels)
    var = float(p @ (levels - mean) ** 2)
    if var <= 0.0:
        return 0.0
    w0 = np.cumsum(p)[:-1]
    m0 = np.cumsum(p * levels)[:-1]
    w1 = 1.0 - w0
    ok = (w0 > 0) & (w1 > 0)
    between = np.zeros_like(w0)
    between[ok] = (mean * w0[ok] - m0[ok]) ** 2 / (w0[ok] * w1[ok])
    return float(between.max() / var)


def _neighbour_correlation(u):
    """Lag-1 autocorrelation over horizontal and vertical neighbours, globally centred (0 for noise, near 1
    for radiographs)."""
    if min(u.shape) < 2 or float(u.max()) == float(u.min()):  # constant: no structure to correlate
        return 0.0
    c = u - np.float32(u.mean())
    den = float(np.einsum("ij,ij->", c, c))
    num = float(np.einsum("ij,ij->", c[:, :-1], c[:, 1:])) + float(np.einsum("ij,ij->", c[:-1, :], c[1:, :]))
    return num / (2.0 * den)


def pixel_limits(spec, modality):
    """The bundle's pixel limits: ``PIXEL_LIMITS[modality]`` overridden key by key by ``spec['pixel']``."""
    limits = {k: dict(v) for k, v in PIXEL_LIMITS[modality].items()}
    for name, override in (spec.get("pixel") or {}).items():
        if name not in limits:
            raise BundleError(f"quality.pixel has unknown check {name!r}; known: {sorted(limits)}")
        unknown = set(override) - {"min_refuse", "min_warn", "max_refuse", "max_warn"}
        if unknown:
            raise BundleError(f"quality.pixel.{name} has unknown limits {sorted(unknown)}")
        limits[name].update(override)
    return limits


def pixel_findings(scores, limits):
    """Findings for the measurements beyond their limits (refuse before warn, once per measurement)."""
    out = []
    for name, bounds in limits.items():
        value = scores.get(name)
        if value is None:
            continue
        for status in ("refuse", "warn"):
            low, high = bounds.get(f"min_{status}"), bounds.get(f"max_{status}")
            if low is not None and value < low:
                out.append(Finding("pixels", PIXEL_REASONS[name], status,
                                   f"{PIXEL_WORDS[name]} {value:.3g} below {low:g}", value, low))
                break
            if high is not None and value > high:
                out.append(Finding("pixels", PIXEL_REASONS[name], status,
                                   f"{PIXEL_WORDS[name]} {value:.3g} above {high:g}", value, high))
                break
    return out


# ------------------------------------------------------------------------------------------- the control

def display_window(manifest):
    """(low, high) HU of the bundle preprocessing's first ``window_ct`` step, or None."""
    for step in manifest.get("preprocessing") or []:
        if step.get("op") == "window_ct":
            from lungedge.runtime.preprocess import LUNG_WINDOW

            center, width = float(step.get("center", LUNG_WINDOW[0])), float(step.get("width", LUNG_WINDOW[1]))
            return (center - width / 2.0, center + width / 2.0)
    return None


class QualityControl:
    """The header and pixel stages for one bundle; ``assess(array, meta) -> Assessment``."""

    def __init__(self, spec, modality, display_window=None):
        self.spec = dict(spec or {})
        # HU -> 0..1 as the model sees it (the preprocessing's window_ct), for the modality check only: its
        # descriptors were fitted on display images rendered through such a window.
        self.display_window = display_window
        self.modality = modality
        self.limits = pixel_limits(self.spec, modality)
        self.enabled = self.spec.get("enabled", True)
        from lungedge.runtime.modality_check import NOT_CHECKED, ModalityCheck  # they build on Finding

        entry = self.spec.get("modality_check")
        self.modality_check = ModalityCheck(entry) if entry else None
        self.modality_described = self.modality_check.describe() if self.modality_check else dict(NOT_CHECKED)
        from lungedge.runtime.orientation_check import NOT_CHECKED as NO_ORIENTATION
        from lungedge.runtime.orientation_check import OrientationCheck

        entry = self.spec.get("orientation_check")
        self.orientation_check = OrientationCheck(entry) if entry else None
        self.orientation_described = (self.orientation_check.describe() if self.orientation_check
                                      else dict(NO_ORIENTATION))

    @classmethod
    def from_manifest(cls, manifest):
        return cls(manifest.get("quality") or {}, manifest["modality"], display_window(manifest))

    def thresholds(self):
        out = {"pixels": {k: dict(v) for k, v in self.limits.items()},
               "header": {"view": self.spec.get("view", "frontal") if self.modality == "xray" else "any",
                          "min_age_years": self.spec.get("min_age_years")},
               "colour": {"max_colour_fraction": self.spec.get("max_colour_fraction", MAX_COLOUR_FRACTION)}}
        out["modality_check"] = dict(self.modality_described)
        out["orientation_check"] = dict(self.orientation_described)
        return out

    def assess(self, array, meta):
        """Header and pixel stages of one 2-D image (or a (1, H, W) array)."""
        result = Assessment(thresholds=self.thresholds())
        if not self.enabled:
            return result
        for finding in header_findings(meta, self.spec, self.modality):
            result.add(finding)
        a = np.asarray(array)
        if a.ndim == 2 or (a.ndim == 3 and a.shape[0] == 1):
            content, h, w = stats_content(a)
            stats = (unit_scale(content, meta), h, w)
            scores = pixel_scores(a, meta, stats)
            result.scores.update(scores)
            for finding in pixel_findings(scores, self.limits):
                result.add(finding)
            # A header that names the modality (DICOM) settles it: the predictor refuses a mismatch with a typed
            # error, so the pixel discriminant is only asked when nothing says (PNG, JPEG, NIfTI).
            modality = self.modality_check is not None and meta.get("modality") is None
            if modality or self.orientation_check is not None:
                from lungedge.runtime.modality_check import descriptor

                u = stats[0]
                if meta.get("unit") == "HU" and self.display_window is not None:
                    u = unit_scale(content, meta, self.display_window)
                features = descriptor(u)  # both checks read the same 74 numbers
                if modality:
                    score = self.modality_check.score_descriptor(features)
                    result.scores["modality_score"] = score
                    for finding in self.modality_check.findings(score, self.modality):
                        result.add(finding)
                if self.orientation_check is not None:  # every input: a DICOM's tags can be wrong too
                    scores = self.orientation_check.scores(features)
                    result.scores.update({f"orientation_{k}": v for k, v in scores.items()})
                    for finding in self.orientation_check.findings(scores):
                        result.add(finding)
        colour, limit = meta.get("colour_fraction"), self.spec.get("max_colour_fraction", MAX_COLOUR_FRACTION)
        if colour is not None:
            result.scores["colour_fraction"] = colour
            if limit is not None and colour > limit:
                result.add(Finding("pixels", "colour_image", "refuse",
                                   f"a colour image ({colour:.3g} of its pixels in colour, above {limit:g}); "
                                   "radiographs are grayscale", colour, limit))
        if meta.get("decoder_warning"):
            result.add(Finding("pixels", "decoder_warning", "warn",
                               f"the decoder reported damage: {meta['decoder_warning'][:120]}"))
        return result


def validate_quality_spec(spec, modality):
    """Raise BundleError naming the first problem in a manifest's ``quality`` block."""
    if not isinstance(spec, dict):
        raise BundleError("manifest quality must be an object")
    unknown = set(spec) - {"enabled", "view", "min_age_years", "pixel", "ood", "area", "max_colour_fraction",
                           "lung_fields", "modality_check", "orientation_check"}
    if unknown:
        raise BundleError(f"manifest quality has unknown keys {sorted(unknown)}")
    if spec.get("view", "frontal") not in ("frontal", "any"):
        raise BundleError(f"quality.view must be 'frontal' or 'any', got {spec.get('view')!r}")
    pixel_limits(spec, modality)
    if spec.get("modality_check") is not None:
        from lungedge.runtime.modality_check import validate_modality_check

        validate_modality_check(spec["modality_check"])
    if spec.get("orientation_check") is not None:
        from lungedge.runtime.orientation_check import validate_orientation_check

        validate_orientation_check(spec["orientation_check"])
