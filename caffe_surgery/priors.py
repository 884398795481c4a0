"""SSD's PriorBox geometry: the aspect ratios and box sizes at one feature-map position (Caffe-SSD's order)."""
import math


def aspect_ratios(param) -> list[float]:
    """1, then each new ratio (and its inverse with ``flip``), skipping near-duplicates, as Caffe-SSD does."""
    ratios = [1.0]
    for ratio in param.aspect_ratio:
        if any(abs(ratio - known) < 1e-6 for known in ratios):
            continue
        ratios.append(ratio)
        if param.flip:
            ratios.append(1.0 / ratio)
    return ratios


def box_sizes(param) -> list[tuple[float, float]]:
    """(width, height) of the priors at one position, in Caffe-SSD's order: per min_size, the square
    min box, the sqrt(min * max) box, then the other aspect ratios."""
    if param.max_size and len(param.max_size) != len(param.min_size):
        raise ValueError("PriorBox needs as many max_size as min_size values")
    sizes = []
    for index, min_size in enumerate(param.min_size):
        sizes.append((min_size, min_size))
        if param.max_size:
            side = math.sqrt(min_size * param.max_size[index])
            sizes.append((side, side))
        for ratio in aspect_ratios(param)[1:]:
            sizes.append((min_size * math.sqrt(ratio), min_size / math.sqrt(ratio)))
    return sizes
