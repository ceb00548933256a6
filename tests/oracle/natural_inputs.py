"""Natural-looking inputs for image models, made on the spot (no download, no data package).

Standard-normal noise is a poor stand-in for a photo: every pixel independent, no smooth
regions, no edges, a flat spectrum. Real images are mostly smooth with a few sharp edges
(their spectrum falls off like 1/f), and a network with folded batch norm was calibrated on
such statistics. `image()` draws a seeded synthetic scene with those traits: a colour
gradient background, a few filled discs and rectangles of random colours (sharp edges),
a soft shading blob, a blur, and mild sensor noise, scaled to [-1, 1] (the usual
MobileNet input range). Same seed, same pixels (numpy's PCG64 through default_rng).

Neither scipy.datasets (downloads on first use) nor scikit-image or matplotlib sample data
(not in the oracle venv) are used, so the oracle needs nothing beyond its requirements.
"""

from __future__ import annotations

import numpy as np


def _box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur over H and W with edge padding (img is [H, W, C])."""
    if radius <= 0:
        return img
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        p = np.pad(img, pad, mode="edge")
        c = np.cumsum(p, axis=axis, dtype=np.float64)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = img.shape[axis]
        img = (np.take(c, np.arange(k, k + n), axis=axis)
               - np.take(c, np.arange(0, n), axis=axis)) / k
    return img


def image(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """One synthetic scene, float32 [height, width, channels], values in [-1, 1]."""
    rng = np.random.default_rng([20240613, seed])
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    # Background: a linear colour gradient in a random direction.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    c0, c1 = rng.uniform(0, 1, channels), rng.uniform(0, 1, channels)
    img = c0 + (c1 - c0) * ramp[..., None]
    # Objects with sharp edges.
    for _ in range(rng.integers(3, 7)):
        colour = rng.uniform(0, 1, channels)
        if rng.random() < 0.5:
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.3)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            y0, x0 = rng.uniform(0, 0.8, 2)
            h, w = rng.uniform(0.1, 0.5, 2)
            mask = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        img[mask] = colour
    # Soft shading (a light source), then the optics' blur and the sensor's noise.
    ly, lx = rng.uniform(0, 1, 2)
    shade = np.exp(-((yy - ly) ** 2 + (xx - lx) ** 2) / 0.3)
    img = img * (0.6 + 0.4 * shade[..., None])
    img = _box_blur(img, radius=max(1, min(height, width) // 64))
    img = img + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 2 - 1).astype(np.float32)


def batch(shape, seed: int = 0) -> np.ndarray:
    """A batch shaped like an NHWC image input ([N, H, W, C]); one scene per item."""
    n, h, w, c = (int(d) for d in shape)
    return np.stack([image(h, w, c, seed=seed * 1000 + i) for i in range(n)])


def is_image_shape(shape) -> bool:
    """An NHWC float input with 1, 3 or 4 channels and a spatial size of at least 8."""
    return len(shape) == 4 and int(shape[3]) in (1, 3, 4) and min(int(shape[1]), int(shape[2])) >= 8
