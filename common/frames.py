"""What a rendered frame must be before the model sees it, and how MuJoCo draws it: the area resize of a frame
of another size, the check of what an env's `render()` returned, the offscreen quality and the camera id."""

from __future__ import annotations

from typing import Any

import numpy as np

from common.tasks import TaskError, TaskSpec


def area_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """An (H, W, C) uint8 frame resized to (size, size, C) by area averaging: each output pixel is the mean of
    the input area it covers, weighted by overlap (OpenCV's INTER_AREA when shrinking), rounded to uint8."""
    h, w = frame.shape[:2]
    if (h, w) == (size, size):
        return frame
    rows, cols = _area_weights(h, size), _area_weights(w, size)
    out = np.einsum("ih,hwc,jw->ijc", rows, frame.astype(np.float32), cols, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix: row i averages the input cells that output cell i covers, by overlap length."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    cells = np.arange(n_in + 1, dtype=np.float64)
    start, end = edges[:-1, None], edges[1:, None]
    overlap = np.clip(np.minimum(end, cells[None, 1:]) - np.maximum(start, cells[None, :-1]), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def checked_frame(frame: Any, task: str, size: int) -> np.ndarray:
    """A rendered (H, W, 3) uint8 frame as the model's (3, size, size); anything else is a TaskError."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        shape = getattr(frame, "shape", None)
        raise TaskError(f"task {task}: render() returned {type(frame).__name__} {shape} of "
                        f"{getattr(frame, 'dtype', '?')}; slac-dist needs an RGB frame, a uint8 array of shape "
                        "(height, width, 3) (convert floats with (frame * 255).astype(np.uint8), drop an alpha channel).")
    return np.ascontiguousarray(area_resize(frame, size).transpose(2, 0, 1))


def check_camera(spec: TaskSpec, model: Any) -> None:
    """A camera id the MuJoCo model has (-1: the free camera), checked before the first render: MuJoCo aborts the
    whole process on one outside the model's range."""
    if spec.camera is not None and not -1 <= spec.camera < model.ncam:
        raise TaskError(f"task {spec.name}: --task.camera {spec.camera} is not a camera of its model, which has "
                        f"{model.ncam} (ids 0 to {model.ncam - 1}, or -1 for the free camera)")


def set_render_quality(model: Any, render: str) -> dict[str, int]:
    """Set a MuJoCo model's offscreen drawing to `render` (common/tasks.RENDER_QUALITIES); returns the
    shadow-map size and multisample count it draws with, which `make export` records so that a user's loop
    draws the same frames. Must run before the first render, which allocates the offscreen buffers."""
    quality = model.vis.quality
    if render == "fast":  # 5-10x cheaper software rendering at 64x64 than the model's own settings
        quality.shadowsize, quality.offsamples = 0, 0
    elif render == "antialiased":
        quality.shadowsize, quality.offsamples = 0, 4
    return {"shadowsize": int(quality.shadowsize), "offsamples": int(quality.offsamples)}
