"""The image operations that the CIFAR-100-C corruptions (corruptions.py) are made of, on batches of images
(N, H, W[, C]): what the original make_cifar_c.py borrowed from skimage, scipy, OpenCV and ImageMagick (scipy's
own filters where it has them), the fog's plasma fractal, the defocus disk and the synthetic frost textures."""

import math
from functools import lru_cache

import numpy as np
from scipy import ndimage

SIZE = 32


def to_uint8(x):
    """0-1 floats to uint8 as the original stores them: np.uint8(clip(x, 0, 1) * 255), which truncates."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def gaussian_blur(x, sigma, mode="nearest", truncate=4.0):
    """skimage.filters.gaussian of each image of x (N, H, W[, C]) over H and W, which is scipy's Gaussian filter
    (skimage's default border 'nearest'; scipy's border names throughout)."""
    return ndimage.gaussian_filter(x, sigma, mode=mode, truncate=truncate, axes=(1, 2))


# clipped_zoom by hand, not with scipy.ndimage.zoom (which it equals to float round-off: tests/test_corruptions.py):
# zoom_blur averages 5 to 25 zooms of every image, and scipy's zoom of the batch made the whole benchmark's
# zoom_blur 27x slower (49.8 s instead of 1.8 s for 1000 images x 5 severities, 2-core Xeon, scipy 1.17).
@lru_cache(maxsize=None)
def zoom_taps(size, factor):
    """The original's clipped_zoom along one axis of `size` pixels: the centre ceil(size / factor) pixels zoomed
    by `factor` (scipy.ndimage.zoom, order 1: output pixel o samples o * (in - 1) / (out - 1)), then the centre
    `size` of the result. Returns (lower, upper, weight of upper) per output pixel, as indices into the full axis."""
    crop = math.ceil(size / factor)
    top = (size - crop) // 2
    zoomed = int(round(crop * factor))
    trim = (zoomed - size) // 2
    coords = (np.arange(size) + trim) * (crop - 1) / max(zoomed - 1, 1)
    lo = np.clip(np.floor(coords).astype(np.int64), 0, crop - 1)
    hi = np.minimum(lo + 1, crop - 1)
    return top + lo, top + hi, (coords - lo).astype(np.float32)


def clipped_zoom_pixel_major(x, factor):
    """clipped_zoom of images stored pixel-major, x (H, W, M) (M: images x channels), so that every gather copies
    whole contiguous rows of M values."""
    lo, hi, f = zoom_taps(x.shape[0], float(factor))
    rows, upper = x[lo], x[hi]
    upper -= rows
    upper *= f[:, None, None]
    rows += upper
    out, upper = rows[:, lo], rows[:, hi]
    upper -= out
    upper *= f[None, :, None]
    out += upper
    return out


def pixel_major(x):
    """(N, H, W, C) -> contiguous (H, W, N * C)."""
    count, height, width, channels = x.shape
    return np.ascontiguousarray(x.transpose(1, 2, 0, 3)).reshape(height, width, count * channels)


def image_major(x, channels):
    """(H, W, N * C) -> (N, H, W, C)."""
    height, width = x.shape[:2]
    return np.ascontiguousarray(x.reshape(height, width, -1, channels).transpose(2, 0, 1, 3))


def clipped_zoom(x, factor):
    """The original's clipped_zoom (see zoom_taps) of each image of x (N, H, W, C)."""
    return image_major(clipped_zoom_pixel_major(pixel_major(x), factor), x.shape[3])


def sample(x, rows, cols, mode):
    """x (N, H, W, C) at real coordinates rows, cols (N, H, W): scipy.ndimage.map_coordinates, order 1 (bilinear),
    border `mode`, image by image and channel by channel."""
    out = np.empty_like(x)
    for n in range(len(x)):
        for c in range(x.shape[3]):
            out[n, :, :, c] = ndimage.map_coordinates(x[n, :, :, c], (rows[n], cols[n]), order=1, mode=mode)
    return out


def motion_blur_kernel(radius, sigma):
    """ImageMagick's motion-blur weights: 2 * ceil(radius) + 1 taps of a one-sided Gaussian, summing to 1."""
    taps = np.arange(2 * math.ceil(radius) + 1)
    kernel = np.exp(-taps ** 2 / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def magick_motion_blur(x, radius, sigma, angles):
    """ImageMagick's MotionBlurImage of each image of x (N, H, W, C) at its angle (degrees): tap i reads the
    pixel i * (cos, sin)(angle) away, rounded, with the edge pixels repeated beyond the border."""
    count, height, width, _ = x.shape
    kernel = motion_blur_kernel(radius, sigma)
    reach = len(kernel) - 1
    taps = np.arange(len(kernel))
    angle = np.deg2rad(np.asarray(angles, np.float64))[:, None]
    dx = np.ceil(taps * np.cos(angle) - 0.5).astype(np.int64) + reach  # (N, taps), into the padded image
    dy = np.ceil(taps * np.sin(angle) - 0.5).astype(np.int64) + reach
    # Channels first, edges repeated: window (dy, dx) of image n is the image shifted by (dy, dx) - reach.
    padded = np.pad(x.transpose(0, 3, 1, 2), [(0, 0), (0, 0), (reach, reach), (reach, reach)], mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (height, width), axis=(2, 3))
    n = np.arange(count)
    out = np.zeros((count, x.shape[3], height, width), x.dtype)
    for i, weight in enumerate(kernel):
        out += np.asarray(weight, x.dtype) * windows[n, :, dy[:, i], dx[:, i]]
    return out.transpose(0, 2, 3, 1)


def plasma_fractal(rng, count, mapsize=SIZE, wibbledecay=3):
    """The original's diamond-square height maps (count, mapsize, mapsize), each scaled to 0-1 (its random
    offsets are wibble * uniform(-wibble, wibble), as there)."""
    maps = np.zeros((count, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        squares = corners + np.roll(corners, -1, axis=1)
        squares = squares + np.roll(squares, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(squares)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def disk(radius, alias_blur):
    """The original's anti-aliased disk kernel: pixels within `radius` of the centre on a 17 x 17 grid,
    normalised, then OpenCV's 3 x 3 GaussianBlur (sigma `alias_blur`, mirrored borders); cut to its support."""
    grid = np.arange(-8, 9) if radius <= 8 else np.arange(-math.ceil(radius), math.ceil(radius) + 1)
    ksize = 3 if radius <= 8 else 5
    xs, ys = np.meshgrid(grid, grid)
    kernel = (xs ** 2 + ys ** 2 <= radius ** 2).astype(np.float64)
    kernel /= kernel.sum()
    blur = np.exp(-np.arange(-(ksize // 2), ksize // 2 + 1) ** 2 / (2 * alias_blur ** 2))
    blur /= blur.sum()
    kernel = ndimage.correlate(kernel, np.outer(blur, blur), mode="mirror")
    support = np.flatnonzero(kernel.sum(axis=0) > 1e-12)
    reach = max(len(grid) // 2 - support[0], support[-1] - len(grid) // 2)
    centre = len(grid) // 2
    return kernel[centre - reach:centre + reach + 1, centre - reach:centre + reach + 1].astype(np.float32)


FROST_TEXTURES = 5  # the original picks one of its first five photographs (randint(5))
FROST_TEXTURE_SIZE = 96


@lru_cache(maxsize=1)
def frost_textures():
    """Synthetic stand-ins for the original's frost photographs (not shipped here), (5, 96, 96, 3) float32 0-255:
    a milky haze, bright crystal veins (ridged noise: where smoothed noise crosses zero) and needle-like
    streaks, tinted ice blue, about as bright as the photographs. Fixed (seeded once), as photographs are."""
    rng = np.random.default_rng(20190506)
    size, textures = FROST_TEXTURE_SIZE, []
    for _ in range(FROST_TEXTURES):
        haze = gaussian_blur(rng.standard_normal((1, size, size), dtype=np.float32), 8.0, "wrap")[0]
        haze = 0.45 + 0.2 * haze / np.abs(haze).max()
        veins = np.zeros((size, size), np.float32)
        for sigma, weight in ((4.0, 0.3), (2.0, 0.25), (1.0, 0.2)):
            field = gaussian_blur(rng.standard_normal((1, size, size), dtype=np.float32), sigma, "wrap")[0]
            veins += weight * (1 - np.abs(field) / np.abs(field).max()) ** 8
        seeds = (rng.random((4, size, size, 1)) < 0.004).astype(np.float32)
        needles = magick_motion_blur(seeds, 4, 3, rng.uniform(0, 360, 4)).sum(axis=(0, 3))
        value = np.clip(haze + veins + 0.8 * needles, 0, 1)
        textures.append(255 * value[..., None] * np.array([0.88, 0.94, 1.0], np.float32))
    return np.stack(textures).astype(np.float32)
