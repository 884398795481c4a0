"""A small scatter/line chart drawn with OpenCV, written as PNG (no plotting library needed)."""
from __future__ import annotations

import os

import cv2
import numpy as np

from .io import atomic_write

WIDTH, HEIGHT, MARGIN = 900, 560, 80
COLOURS = [(200, 90, 30), (40, 140, 40), (30, 60, 200), (150, 50, 150)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_chart(series: dict[str, list[tuple[float, float, str]]], path: str | os.PathLike, *, title: str,
               x_label: str, y_label: str) -> None:
    """Draw each series (points (x, y, label), joined in order) and write a PNG atomically."""
    canvas = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    points = [(x, y) for values in series.values() for x, y, _ in values]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_low, x_high = 0.0, max(xs) * 1.05
    y_low, y_high = min(ys) - 0.02, min(1.0, max(ys) + 0.02)

    def at(x, y):
        return (int(MARGIN + (x - x_low) / (x_high - x_low or 1) * (WIDTH - 2 * MARGIN)),
                int(HEIGHT - MARGIN - (y - y_low) / (y_high - y_low or 1) * (HEIGHT - 2 * MARGIN)))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(canvas, at(x_low, y_low), at(x_high, y_high), (0, 0, 0), 1)
    for x in _ticks(x_low, x_high):
        cv2.putText(canvas, f"{x / 1000:.0f}k", (at(x, y_low)[0] - 15, HEIGHT - MARGIN + 25), font, 0.45, (0, 0, 0), 1)
    for y in _ticks(y_low, y_high):
        cv2.putText(canvas, f"{y:.3f}", (10, at(x_low, y)[1] + 5), font, 0.45, (0, 0, 0), 1)
    cv2.putText(canvas, title, (MARGIN, 40), font, 0.7, (0, 0, 0), 2)
    cv2.putText(canvas, x_label, (WIDTH // 2 - 60, HEIGHT - 20), font, 0.55, (0, 0, 0), 1)
    cv2.putText(canvas, y_label, (10, MARGIN - 20), font, 0.55, (0, 0, 0), 1)
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        corners = [at(x, y) for x, y, _ in values]
        for start, end in zip(corners, corners[1:]):
            cv2.line(canvas, start, end, colour, 2, cv2.LINE_AA)
        for (x, y, label), corner in zip(values, corners):
            cv2.circle(canvas, corner, 5, colour, -1, cv2.LINE_AA)
            cv2.putText(canvas, label, (corner[0] + 7, corner[1] - 7), font, 0.42, colour, 1, cv2.LINE_AA)
        cv2.putText(canvas, name, (WIDTH - MARGIN - 300, MARGIN + 25 * index + 20), font, 0.5, colour, 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", canvas)
    atomic_write(path, [png.tobytes()])
