"""Scene parser: reads a palette-coloured shape image back into objects (GenEval's detector here).

Each pixel takes the nearest palette colour, allowing for blends with the background at blurred
edges, or none if it lies far from all of them. Each colour's 8-connected components above a
minimum area are candidates; a candidate's shape is the template, drawn in the candidate's own
bounding box, that it overlaps best (intersection over union). Candidates that are too elongated
or fit no template well are dropped, as a detector would drop them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from benchmarks.geneval_rules import Detection

Color = tuple[int, int, int]
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class SceneParser:
    """Detector for flat-coloured shapes on a plain background.

    `mask_fn(cls, width, height)` draws class `cls` filling a width x height box (bool, H x W).
    `max_distance` is the RGB distance beyond which a pixel belongs to no palette colour;
    `min_area_fraction` of the image is the smallest component kept.
    """

    def __init__(
        self,
        palette: Mapping[str, Color],
        background: Color,
        classes: Sequence[str],
        mask_fn: Callable[[str, int, int], np.ndarray],
        *,
        max_distance: float = 110.0,
        min_area_fraction: float = 0.02,
        min_iou: float = 0.6,
        max_aspect: float = 1.6,
    ) -> None:
        self.colors = list(palette)
        self.classes = tuple(classes)
        self.mask_fn = mask_fn
        self.max_distance = max_distance
        self.min_area_fraction = min_area_fraction
        self.min_iou = min_iou
        self.max_aspect = max_aspect
        self._background = np.array(background, dtype=np.float64)
        self._directions = np.array(list(palette.values()), dtype=np.float64) - self._background

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Per-pixel label, H x W: k >= 1 for colour k, 0 for background, -1 for no palette colour.

        A blurred edge pixel is a blend of a colour with the background, so each colour owns the
        half of its blend line nearest to it (blend weight >= 1/2) and the background owns the
        other halves; a pixel takes the nearest of these segments unless all are too far.
        """
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected an RGB image (3, H, W), got shape {image.shape}")
        offsets = image.reshape(3, -1).T.astype(np.float64) - self._background
        cross = offsets @ self._directions.T
        sq_dir = (self._directions**2).sum(1)
        sq_offset = (offsets**2).sum(1, keepdims=True)
        weight = cross / sq_dir  # blend weight of each colour that best explains each pixel

        def sq_distance(w: np.ndarray) -> np.ndarray:
            return sq_offset - 2 * w * cross + w**2 * sq_dir

        colour_d2 = sq_distance(np.clip(weight, 0.5, 1.0))
        background_d2 = sq_distance(np.clip(weight, 0.0, 0.5)).min(1, keepdims=True)
        d2 = np.concatenate([background_d2, colour_d2], axis=1)
        nearest = d2.argmin(1)
        nearest[d2[np.arange(len(d2)), nearest] > self.max_distance**2] = -1
        return nearest.reshape(image.shape[1:])

    def __call__(self, image: np.ndarray) -> list[Detection]:
        """Objects in a uint8 (3, H, W) image, largest first."""
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {image.dtype}")
        labels = self.labels(image)
        min_area = max(3, round(self.min_area_fraction * labels.size))
        detections = []
        for k, color in enumerate(self.colors, start=1):
            components, n = ndimage.label(labels == k, structure=_EIGHT_CONNECTED)
            if n == 0:
                continue
            areas = np.bincount(components.ravel())
            for i, box in enumerate(ndimage.find_objects(components), start=1):
                if areas[i] < min_area:
                    continue
                cls = self._classify(components[box] == i)
                if cls is not None:
                    y, x = box
                    xyxy = (float(x.start), float(y.start), float(x.stop), float(y.stop))
                    detections.append(Detection(cls, color, xyxy, int(areas[i])))
        detections.sort(key=lambda d: (-d.area, d.box[1], d.box[0]))
        return detections

    def fragments(self, image: np.ndarray) -> int:
        """Palette-coloured components too small to be an object (below the minimum area): the specks `__call__` drops."""
        labels = self.labels(np.asarray(image))
        min_area = max(3, round(self.min_area_fraction * labels.size))
        count = 0
        for k in range(1, len(self.colors) + 1):
            components, n = ndimage.label(labels == k, structure=_EIGHT_CONNECTED)
            count += int((np.bincount(components.ravel())[1:] < min_area).sum()) if n else 0
        return count

    def _classify(self, mask: np.ndarray) -> str | None:
        h, w = mask.shape
        if max(h, w) > self.max_aspect * min(h, w):
            return None
        ious = [_iou(mask, self.mask_fn(cls, w, h)) for cls in self.classes]
        best = int(np.argmax(ious))
        return self.classes[best] if ious[best] >= self.min_iou else None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())
