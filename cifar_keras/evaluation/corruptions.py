"""CIFAR-100-C-style corruptions: the 15 corruption types of Hendrycks & Dietterich (ICLR 2019) at 5
severities each, for batches of uint8 images (N, 32, 32, 3), and the benchmark of a model on them.

The parameter tables are those of the original code that made CIFAR-10-C and CIFAR-100-C
(`make_cifar_c.py` of github.com/hendrycks/robustness), and so is each step, re-implemented in numpy
and Pillow, vectorised over the batch; what the original borrowed from other libraries is rebuilt
from their definitions:

- skimage's `gaussian` (scipy's Gaussian filter: truncated at 4 sigma, 3 for elastic), OpenCV's
  `filter2D`/`GaussianBlur`/`warpAffine` and scipy's `zoom`/`map_coordinates` (order 1): separable
  kernels, bilinear sampling and the same border rules (edge, mirror, mirror-without-edge);
- motion blur and the snow's streaks: ImageMagick's `MotionBlurImage` (through Wand in the original):
  a one-sided Gaussian of 2 * ceil(radius) + 1 taps along the angle, edge pixels repeated;
- brightness: HSV value + c, done as a rescaling of RGB (what the HSV round trip amounts to).

One corruption is an approximation: frost (the original blends crops of six frost photographs, not
shipped here: synthetic ice textures stand in). Motion blur and snow use a numpy re-implementation of
ImageMagick's kernel instead of Wand/ImageMagick itself; glass blur reproduces the original's pixel
shuffle as it actually runs (see there).

Severity orders difficulty, not always pixel change: under the original tables the mean absolute
change from the clean image grows with severity for 11 corruptions, but not for frost (the image's
weight falls as the frost's rises: severities 3-5 change fewer grey levels, more structure), elastic
(the random affine jitter shrinks from 2.56 to 0.96 pixels while the local elastic displacement grows),
glass blur (two shuffle passes at severities 4-5, one at 1-3; more blur brings the shuffled pixels back
towards their neighbours' mean) and motion blur (severities 3 and 4 share sigma 2; the longer kernel of 4
adds taps of < 0.3 % weight). tests/test_corruptions.py checks each of these as it holds.

Randomness (noise, angles, crops) comes from a numpy Generator keyed by (seed, corruption, chunk of
1000 images): the same batch, name, severity and seed always give the same images; the first
k * 1000 images of a batch are corrupted as they are in a larger batch; and the severities of one
corruption share their random draws (the original drew them afresh: the same distribution per
severity, but here two severities differ by their parameters only, not by luck).
"""

import io
import math
import sys
import time
from functools import lru_cache

import numpy as np
from PIL import Image

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
SIZE = 32
CHUNK = 1000  # images per random stream (and per step: bounds the memory of the float arrays)

# --- parameter tables of make_cifar_c.py (index: severity - 1) -------------------------------------

GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # standard deviation, 0-1 scale
SHOT_NOISE = (500, 250, 100, 75, 50)  # photons at full intensity
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # share of values set to 0 or 1
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))  # disk radius, alias blur
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # sigma, max delta, iterations
MOTION_BLUR = ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))  # ImageMagick radius, sigma
ZOOM_BLUR = tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26))  # zoom factors
SNOW = ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
FROST = ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # image weight, frost weight
FOG = ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75))  # fog strength, wibble decay
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to the HSV value
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the deviation from each channel's mean
ELASTIC = tuple((SIZE * a, SIZE * s, SIZE * d) for a, s, d in (  # alpha, sigma, affine jitter (pixels)
    (0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)))
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # downscale factor
JPEG_QUALITY = (80, 65, 58, 50, 40)


# --- helpers ---------------------------------------------------------------------------------------

def to_uint8(x):
    """0-1 floats to uint8 as the original stores them: np.uint8(clip(x, 0, 1) * 255), which truncates."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def fold_index(index, size, mode):
    """Integer indices mapped into [0, size): 'edge' repeats the border pixel; 'symmetric' mirrors with it
    (d c b a | a b c d | d c b a: scipy's 'reflect'); 'reflect' mirrors without it (d c b | a b c d | c b a:
    OpenCV's BORDER_REFLECT_101)."""
    if index.min() >= 0 and index.max() < size:
        return index
    if mode == "edge":
        return np.clip(index, 0, size - 1)
    if mode == "symmetric":
        index = np.mod(index, 2 * size)
        return np.where(index >= size, 2 * size - 1 - index, index)
    if mode == "reflect":
        index = np.mod(index, 2 * size - 2)
        return np.where(index >= size, 2 * size - 2 - index, index)
    raise ValueError(f"unknown border mode {mode!r}")


def correlate(x, kernel, axes=(1, 2), mode="reflect"):
    """2-D correlation of each image (and channel) of x (N, H, W, ...) with `kernel` (odd sides), borders
    by `mode` (numpy.pad's names)."""
    kh, kw = kernel.shape
    rh, rw = kh // 2, kw // 2
    height, width = x.shape[axes[0]], x.shape[axes[1]]
    pad = [(0, 0)] * x.ndim
    pad[axes[0]], pad[axes[1]] = (rh, rh), (rw, rw)
    padded = np.pad(x, pad, mode=mode)
    out = np.zeros_like(x)
    window = [slice(None)] * x.ndim
    for i in range(kh):
        for j in range(kw):
            if kernel[i, j]:
                window[axes[0]], window[axes[1]] = slice(i, i + height), slice(j, j + width)
                out += kernel[i, j] * padded[tuple(window)]
    return out


def gaussian_kernel(sigma, truncate=4.0):
    """scipy's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised to sum 1."""
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * offsets ** 2 / sigma ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian_blur(x, sigma, mode="edge", truncate=4.0):
    """skimage.filters.gaussian of each image of x (N, H, W[, C]) over H and W: scipy's separable Gaussian
    (skimage's default border 'nearest' = numpy's 'edge'; 'reflect' there = numpy's 'symmetric')."""
    if sigma <= 0:
        return x
    kernel = gaussian_kernel(sigma, truncate)
    x = correlate(x, kernel[:, None], mode=mode)
    return correlate(x, kernel[None, :], mode=mode)


def bilinear(x, rows, cols, mode):
    """x (N, H, W, C) sampled at real coordinates rows, cols (N, H, W), linear interpolation between the four
    nearest pixels, indices outside folded by `mode` (see fold_index)."""
    count, height, width, channels = x.shape
    r0, c0 = np.floor(rows), np.floor(cols)
    fr, fc = (rows - r0)[..., None].astype(x.dtype), (cols - c0)[..., None].astype(x.dtype)
    r0, c0 = r0.astype(np.int64), c0.astype(np.int64)
    pixels = x.reshape(-1, channels)  # one row per pixel: gathers by flat index
    first = (np.arange(count) * height * width)[:, None, None]
    ra, rb = first + width * fold_index(r0, height, mode), first + width * fold_index(r0 + 1, height, mode)
    ca, cb = fold_index(c0, width, mode), fold_index(c0 + 1, width, mode)

    def lerp(a, b, f):  # a + (b - a) f, in place
        b -= a
        b *= f
        a += b
        return a

    top = lerp(pixels.take(ra + ca, axis=0), pixels.take(ra + cb, axis=0), fc)
    bottom = lerp(pixels.take(rb + ca, axis=0), pixels.take(rb + cb, axis=0), fc)
    return lerp(top, bottom, fr)


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


# --- the 15 corruptions: images uint8 (N, 32, 32, 3), severity 1-5, rng -> uint8 ------------------

def gaussian_noise(images, severity, rng):
    x = images / np.float32(255)
    noise = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(GAUSSIAN_NOISE[severity - 1])
    return to_uint8(x + noise)


def shot_noise(images, severity, rng):
    """Poisson noise: each value counts photons, c at full intensity."""
    c = SHOT_NOISE[severity - 1]
    return to_uint8(rng.poisson(images / 255.0 * c) / c)


def impulse_noise(images, severity, rng):
    """Salt and pepper (skimage's random_noise 's&p'): each value independently, with probability c, becomes
    0 or 1 (even odds)."""
    x = images / np.float32(255)
    flipped = rng.random(x.shape, dtype=np.float32) < IMPULSE_NOISE[severity - 1]
    salted = rng.random(x.shape, dtype=np.float32) < 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return to_uint8(x)


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
    kernel = correlate(correlate(kernel[None, :, :, None], blur[:, None]), blur[None, :])[0, :, :, 0]
    support = np.flatnonzero(kernel.sum(axis=0) > 1e-12)
    reach = max(len(grid) // 2 - support[0], support[-1] - len(grid) // 2)
    centre = len(grid) // 2
    return kernel[centre - reach:centre + reach + 1, centre - reach:centre + reach + 1].astype(np.float32)


def defocus_blur(images, severity, rng):
    radius, alias = DEFOCUS_BLUR[severity - 1]
    return to_uint8(correlate(images / np.float32(255), disk(radius, alias), mode="reflect"))


def glass_blur(images, severity, rng):
    """Blur, locally shuffle, blur. The original's shuffle visits the pixels (h, w) from (31, 31) down to (2, 2)
    and 'swaps' each with the neighbour (h + dy, w + dx), dy, dx in {-1, 0}, by a tuple assignment of numpy
    views, which copies the neighbour into the pixel and leaves the neighbour as it was; as those neighbours
    are visited later, each pass is a gather from the pass's input, done so here."""
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    x = to_uint8(gaussian_blur(images / np.float32(255), sigma))
    n = np.arange(len(x))[:, None, None]
    span = np.arange(delta + 1, SIZE)  # the original's range(32 - delta, delta, -1)
    for _ in range(iterations):
        dy, dx = rng.integers(-delta, delta, size=(2, len(x), len(span), len(span)))  # randint: [-delta, delta)
        x[:, delta + 1:, delta + 1:] = x[n, span[None, :, None] + dy, span[None, None, :] + dx]
    return to_uint8(gaussian_blur(x / np.float32(255), sigma))


def motion_blur(images, severity, rng):
    """Motion blur at an angle uniform in [-45, 45] degrees, rounded to uint8. Approximation of the original's
    Wand/ImageMagick call: ImageMagick's MotionBlurImage re-implemented in numpy (magick_motion_blur)."""
    radius, sigma = MOTION_BLUR[severity - 1]
    angles = rng.uniform(-45, 45, len(images))
    blurred = magick_motion_blur(images.astype(np.float32), radius, sigma, angles)
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def zoom_blur(images, severity, rng):
    """The mean of the image and its zooms by 1, 1.01, ... (up to 1.05 ... 1.25)."""
    x = pixel_major(images / np.float32(255))
    factors = ZOOM_BLUR[severity - 1]
    out = x.copy()
    for factor in factors:
        out += clipped_zoom_pixel_major(x, factor)
    return to_uint8(image_major(out / (len(factors) + 1), images.shape[3]))


def snow(images, severity, rng):
    """Snow flakes (thresholded zoomed Gaussian noise, motion-blurred at an angle in [-135, -45] degrees, added
    with its 180-degree rotation) on a whitened image. The streaks' blur is ImageMagick's MotionBlurImage
    re-implemented in numpy (magick_motion_blur), where the original calls Wand/ImageMagick."""
    loc, scale, zoom, threshold, radius, sigma, keep = SNOW[severity - 1]
    x = images / np.float32(255)
    layer = rng.normal(loc, scale, (len(x), SIZE, SIZE, 1)).astype(np.float32)
    layer = clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # the original goes through an 8-bit PNG
    angles = rng.uniform(-135, -45, len(x))
    layer = np.clip(np.rint(magick_motion_blur(layer.astype(np.float32), radius, sigma, angles)), 0, 255) / 255
    grey = x @ np.array([0.299, 0.587, 0.114], np.float32)  # OpenCV's RGB2GRAY
    x = keep * x + (1 - keep) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return to_uint8(x + layer + np.rot90(layer, k=2, axes=(1, 2)))


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
        haze = gaussian_blur(rng.standard_normal((1, size, size), dtype=np.float32), 8.0, mode="wrap")[0]
        haze = 0.45 + 0.2 * haze / np.abs(haze).max()
        veins = np.zeros((size, size), np.float32)
        for sigma, weight in ((4.0, 0.3), (2.0, 0.25), (1.0, 0.2)):
            field = gaussian_blur(rng.standard_normal((1, size, size), dtype=np.float32), sigma, mode="wrap")[0]
            veins += weight * (1 - np.abs(field) / np.abs(field).max()) ** 8
        seeds = (rng.random((4, size, size, 1)) < 0.004).astype(np.float32)
        needles = magick_motion_blur(seeds, 4, 3, rng.uniform(0, 360, 4)).sum(axis=(0, 3))
        value = np.clip(haze + veins + 0.8 * needles, 0, 1)
        textures.append(255 * value[..., None] * np.array([0.88, 0.94, 1.0], np.float32))
    return np.stack(textures).astype(np.float32)


def frost(images, severity, rng):
    """c0 * image + c1 * a random 32 x 32 crop of a frost texture, 0-255. Approximation: the original crops
    photographs of frost (frost1-6.png/jpg, shrunk to 1/5); synthetic frost textures (frost_textures) stand
    in for them."""
    weight, frost_weight = FROST[severity - 1]
    textures = frost_textures()
    which = rng.integers(FROST_TEXTURES, size=len(images))
    top, left = rng.integers(0, FROST_TEXTURE_SIZE - SIZE, size=(2, len(images)))
    rows = top[:, None, None] + np.arange(SIZE)[None, :, None]
    cols = left[:, None, None] + np.arange(SIZE)[None, None, :]
    layer = textures[which[:, None, None], rows, cols]
    return np.clip(weight * images.astype(np.float32) + frost_weight * layer, 0, 255).astype(np.uint8)


def fog(images, severity, rng):
    strength, decay = FOG[severity - 1]
    x = images / np.float32(255)
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * plasma_fractal(rng, len(x), SIZE, decay)[..., None].astype(np.float32)
    return to_uint8(x * peak / (peak + strength))


def brightness(images, severity, rng):
    """HSV value + c (clipped to 1): hue and saturation kept, so each pixel's RGB scales by V' / V (grey V'
    where V = 0), as skimage's rgb2hsv / hsv2rgb round trip gives."""
    x = images / np.float32(255)
    value = x.max(axis=3, keepdims=True)
    new = np.minimum(value + np.float32(BRIGHTNESS[severity - 1]), 1)
    scale = np.divide(new, value, out=np.zeros_like(value), where=value > 0)
    return to_uint8(np.where(value > 0, x * scale, new))


def contrast(images, severity, rng):
    x = images / np.float32(255)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return to_uint8((x - mean) * np.float32(CONTRAST[severity - 1]) + mean)


def elastic_transform(images, severity, rng):
    """A random affine warp (three points moved by up to c2 pixels; OpenCV's warpAffine, bilinear, mirrored
    borders without the edge) then a smooth random displacement (uniform noise, Gaussian-smoothed with sigma c1,
    times alpha c0; scipy's map_coordinates, order 1, mirrored borders)."""
    alpha, sigma, jitter = ELASTIC[severity - 1]
    x = images / np.float32(255)
    n = len(x)
    centre, side = np.float32(SIZE // 2), SIZE // 3
    source_points = np.array([[centre + side, centre + side], [centre + side, centre - side],
                              [centre - side, centre - side]], np.float64)  # (x, y)
    target_points = source_points + rng.uniform(-jitter, jitter, (n, 3, 2)).astype(np.float32)
    # The affine map source -> target, (n, 3, 2) = inv([x y 1]) @ target; warpAffine samples its inverse.
    forward = np.linalg.solve(np.concatenate([source_points, np.ones((3, 1))], axis=1)[None], target_points)
    linear, shift = forward[:, :2].transpose(0, 2, 1), forward[:, 2]  # target = linear @ source + shift
    inverse = np.linalg.inv(linear)
    ys, xs = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    px, py = xs[None] - shift[:, 0, None, None], ys[None] - shift[:, 1, None, None]  # (n, H, W)
    source_x = inverse[:, 0, 0, None, None] * px + inverse[:, 0, 1, None, None] * py
    source_y = inverse[:, 1, 0, None, None] * px + inverse[:, 1, 1, None, None] * py
    x = bilinear(x, source_y, source_x, "reflect")
    noise = rng.uniform(-1, 1, (2, n, SIZE, SIZE)).astype(np.float32).reshape(2 * n, SIZE, SIZE)  # dx, then dy
    dx, dy = (gaussian_blur(noise, sigma, mode="symmetric", truncate=3) * np.float32(alpha)).reshape(2, n, SIZE, SIZE)
    return to_uint8(bilinear(x, ys[None] + dy, xs[None] + dx, "symmetric"))


def pixelate(images, severity, rng):
    """Pillow BOX downscale to int(32 * c) pixels and back, image by image (as the original; 8-bit throughout)."""
    small = (int(SIZE * PIXELATE[severity - 1]),) * 2
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize(small, Image.Resampling.BOX)
                            .resize((SIZE, SIZE), Image.Resampling.BOX))
    return out


def jpeg_compression(images, severity, rng):
    """Pillow's JPEG encoder at quality c (its default 4:2:0 chroma subsampling), decoded again."""
    quality = JPEG_QUALITY[severity - 1]
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(images, name, severity, seed=0):
    """`images` (N, 32, 32, 3) uint8 with corruption `name` at `severity` (1-5): a new uint8 array of the same
    shape. Deterministic in (images, name, severity, seed); see the module docstring."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (SIZE, SIZE, 3):
        raise ValueError(f"expected uint8 images (N, {SIZE}, {SIZE}, 3), got {images.dtype} {images.shape}")
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    out = np.empty_like(images)
    for chunk, start in enumerate(range(0, len(images), CHUNK)):
        rng = np.random.default_rng([seed, CORRUPTIONS.index(name), chunk])
        out[start:start + CHUNK] = FUNCTIONS[name](images[start:start + CHUNK], severity, rng)
    return out


# --- the benchmark -------------------------------------------------------------------------------

class Progress:
    """A progress bar on standard error: redrawn in place on a terminal, one line per `every` steps otherwise."""

    def __init__(self, total, stream=None, every=5, width=30):
        self.total, self.done, self.every, self.width = total, 0, every, width
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def step(self, label):
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        filled = self.width * self.done // self.total
        line = (f"[{'=' * filled}{' ' * (self.width - filled)}] {self.done}/{self.total} {label:<22} "
                f"{elapsed:5.0f} s, ~{eta:.0f} s left")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
        elif self.done % self.every == 0 or self.done in (1, self.total):
            self.stream.write(line + "\n")
        self.stream.flush()


def benchmark(score, split, names=CORRUPTIONS, severities=SEVERITIES, seed=0, progress=True):
    """Score a model on `split` clean and under every corruption x severity.

    score: a function Split -> metrics dict with "top1" (evaluate.evaluate_model or evaluate_predictor with the
    model bound). Returns {"clean": metrics, "corrupted": [{"corruption", "severity", **metrics}, ...],
    "summary": {"mean_corruption_top1" (mean over all pairs), "top1_drop" (clean minus that),
    "by_corruption" (mean top-1 over the severities), "by_severity" (mean top-1 over the corruptions)},
    "corruption_time_s", "scoring_time_s"}."""
    from cifar_keras.data.cifar100 import Split

    bar = Progress(1 + len(names) * len(severities), stream=None if progress else _Silent())
    timing = {"corruption": 0.0, "scoring": 0.0}
    start = time.perf_counter()
    clean = score(split)
    timing["scoring"] += time.perf_counter() - start
    bar.step("clean")
    corrupted = []
    for name in names:
        for severity in severities:
            start = time.perf_counter()
            images = corrupt(split.images, name, severity, seed)
            middle = time.perf_counter()
            metrics = score(Split(images, split.fine, split.coarse))
            timing["corruption"] += middle - start
            timing["scoring"] += time.perf_counter() - middle
            corrupted.append({"corruption": name, "severity": severity, **metrics})
            bar.step(f"{name} {severity}")
    return {"clean": clean, "corrupted": corrupted, "summary": summarise(clean, corrupted),
            "corruption_time_s": round(timing["corruption"], 2), "scoring_time_s": round(timing["scoring"], 2)}


class _Silent:
    def write(self, text):
        pass

    def flush(self):
        pass


def summarise(clean, corrupted):
    """Mean top-1 over all corruption x severity pairs, per corruption (over severities), per severity."""
    def mean(rows):
        return float(np.mean([r["top1"] for r in rows]))

    names = list(dict.fromkeys(r["corruption"] for r in corrupted))
    severities = sorted({r["severity"] for r in corrupted})
    overall = mean(corrupted)
    return {"mean_corruption_top1": overall, "top1_drop": float(clean["top1"]) - overall,
            "by_corruption": {n: mean([r for r in corrupted if r["corruption"] == n]) for n in names},
            "by_severity": {str(s): mean([r for r in corrupted if r["severity"] == s]) for s in severities}}


def table(record):
    """Top-1 (%) per corruption (rows) and severity (columns), with the means, as plain text."""
    severities = sorted({r["severity"] for r in record["corrupted"]})
    summary = record["summary"]
    top1 = {(r["corruption"], r["severity"]): r["top1"] for r in record["corrupted"]}
    lines = [f"{'top-1 %':<18}" + "".join(f"{'sev ' + str(s):>8}" for s in severities) + f"{'mean':>8}"]
    for name, mean in summary["by_corruption"].items():
        lines.append(f"{name:<18}" + "".join(f"{top1[(name, s)]:8.2f}" for s in severities) + f"{mean:8.2f}")
    lines.append(f"{'mean':<18}" + "".join(f"{summary['by_severity'][str(s)]:8.2f}" for s in severities)
                 + f"{summary['mean_corruption_top1']:8.2f}")
    lines.append(f"clean top-1 {record['clean']['top1']:.2f} %, mean corruption top-1 "
                 f"{summary['mean_corruption_top1']:.2f} % ({len(record['corrupted'])} corruption x severity pairs, "
                 f"{record['images']} images)")
    return "\n".join(lines)
