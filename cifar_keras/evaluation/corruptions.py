"""CIFAR-100-C-style corruptions: the 15 corruption types of Hendrycks & Dietterich (ICLR 2019) at 5
severities each, for batches of uint8 images (N, 32, 32, 3). The benchmark of a model on them:
corruption_benchmark.py; the image operations they are made of: corruption_ops.py.

The parameter tables are those of the original code that made CIFAR-10-C and CIFAR-100-C
(`make_cifar_c.py` of github.com/hendrycks/robustness), and so is each step, vectorised over the batch,
with the libraries the original used where they are at hand:

- skimage's `gaussian` is scipy's Gaussian filter (truncated at 4 sigma, 3 for elastic); OpenCV's
  `filter2D`/`GaussianBlur` are scipy.ndimage.correlate and OpenCV's `warpAffine` (bilinear) is
  scipy.ndimage.map_coordinates (order 1), with OpenCV's border (mirror without the edge: scipy's 'mirror');
  scipy's `map_coordinates` (order 1) is used as the original used it, and its `zoom` (order 1) is
  rebuilt as gathers of whole pixel rows (corruption_ops.clipped_zoom: 27x faster for zoom blur);
- motion blur and the snow's streaks: ImageMagick's `MotionBlurImage` (through Wand in the original),
  re-implemented in numpy: a one-sided Gaussian of 2 * ceil(radius) + 1 taps along the angle, edge pixels
  repeated;
- brightness: HSV value + c, done as a rescaling of RGB (what the HSV round trip amounts to); pixelate and
  JPEG: Pillow, as in the original.

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

import numpy as np
from PIL import Image
from scipy import ndimage

from cifar_keras.evaluation.corruption_ops import (FROST_TEXTURE_SIZE, FROST_TEXTURES, SIZE, clipped_zoom,
                                                   clipped_zoom_pixel_major, disk, frost_textures,
                                                   gaussian_blur, image_major, magick_motion_blur,
                                                   pixel_major, plasma_fractal, sample, to_uint8)

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
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


def defocus_blur(images, severity, rng):
    radius, alias = DEFOCUS_BLUR[severity - 1]
    kernel = disk(radius, alias)[None, :, :, None]
    return to_uint8(ndimage.correlate(images / np.float32(255), kernel, mode="mirror"))


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
    x = sample(x, source_y, source_x, "mirror")
    noise = rng.uniform(-1, 1, (2, n, SIZE, SIZE)).astype(np.float32).reshape(2 * n, SIZE, SIZE)  # dx, then dy
    dx, dy = (gaussian_blur(noise, sigma, "reflect", truncate=3) * np.float32(alpha)).reshape(2, n, SIZE, SIZE)
    return to_uint8(sample(x, ys[None] + dy, xs[None] + dx, "reflect"))


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
