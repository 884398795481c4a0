"""SSD's PriorBox geometry: the constant its top holds (it depends only on shapes and parameters)."""
import numpy as np

from ..priors import box_sizes


def prior_boxes(param, layer_hw: tuple[int, int], image_hw: tuple[int, int],
                sizes: list[tuple[float, float]] | None = None) -> np.ndarray:
    """The PriorBox top, shape (1, 2, H * W * priors * 4): corner boxes, then their variances; ``sizes``
    are the (width, height) of the priors at each position (default: SSD's, from min/max size and ratios)."""
    layer_h, layer_w = layer_hw
    img_h, img_w = _image_size(param, image_hw)
    step_h, step_w = _steps(param, img_h / layer_h, img_w / layer_w)
    centers_y = (np.arange(layer_h) + param.offset) * step_h
    centers_x = (np.arange(layer_w) + param.offset) * step_w
    sizes = np.asarray(box_sizes(param) if sizes is None else sizes, dtype=np.float64)
    cy, cx = np.meshgrid(centers_y, centers_x, indexing="ij")
    cx, cy = cx[:, :, None], cy[:, :, None]
    half_w, half_h = sizes[:, 0] / 2, sizes[:, 1] / 2
    boxes = np.stack([(cx - half_w) / img_w, (cy - half_h) / img_h,
                      (cx + half_w) / img_w, (cy + half_h) / img_h], axis=-1).reshape(-1)
    if param.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    variance = list(param.variance) or [0.1]
    if len(variance) not in (1, 4):
        raise ValueError("PriorBox needs 1 or 4 variance values")
    variances = np.tile(np.asarray(variance * (4 // len(variance))), boxes.size // 4)
    return np.stack([boxes, variances]).astype(np.float32)[None]


def _image_size(param, image_hw: tuple[int, int]) -> tuple[int, int]:
    """img_h/img_w, img_size, or the size of the image bottom."""
    if param.HasField("img_h") or param.HasField("img_w"):
        return param.img_h, param.img_w
    if param.HasField("img_size"):
        return param.img_size, param.img_size
    return image_hw


def _steps(param, default_h: float, default_w: float) -> tuple[float, float]:
    """step_h/step_w, step, or the image-to-layer size ratio."""
    if param.HasField("step_h") or param.HasField("step_w"):
        return param.step_h, param.step_w
    if param.HasField("step"):
        return param.step, param.step
    return default_h, default_w
