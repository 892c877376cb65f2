#!/usr/bin/python3
"""Writes tests/fixtures/images: small images in every format and layout
plugins/image_common decodes, and what PIL makes of them, as the oracle for
tests/image_common (ctest image_common).

Run with Debian's Python and Pillow (the versions LMDeploy's load_image and
transformers' CLIPImageProcessor call on a Debian 12 machine):

    apt-get install python3-pil
    /usr/bin/python3 scripts/make-image-fixtures.py [OUT_DIR]

For each NAME.EXT it writes NAME.EXT.ppm: Image.open(NAME.EXT).convert("RGB")
(what LMDeploy's load_image hands on). cases.txt lists CLIP preprocessing
cases, one a line:
    SOURCE PAD SHORTEST_EDGE CROP_W CROP_H REFERENCE
where REFERENCE (a PNG) is the source decoded as above, padded to a square
of int(mean * 255) when PAD is 1 (LLaVA's expand2square), resized so its
shortest edge is SHORTEST_EDGE (transformers' size rule, PIL's BICUBIC) and
centre-cropped as transformers' center_crop does.
"""
import math
import os
import random
import struct
import sys
import zlib

from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "images")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def picture(width, height, seed):
    """Smooth gradients, hard edges and noise: every resampling tap matters."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height))
    px = img.load()
    for y in range(height):
        for x in range(width):
            r = int(127.5 + 127.5 * math.sin(x / 7.0 + y / 13.0))
            g = int(255 * x / max(width - 1, 1))
            b = 255 if (x // 9 + y // 7) % 2 else 0
            if (x - width / 3) ** 2 + (y - height / 2) ** 2 < (height / 4) ** 2:
                r, g, b = 250, 20, 60
            n = rng.randint(-12, 12)
            px[x, y] = tuple(max(0, min(255, v + n)) for v in (r, g, b))
    return img


def write_ppm(img, path):
    rgb = img.convert("RGB")
    with open(path, "wb") as f:
        f.write(b"P6\n%d %d\n255\n" % rgb.size)
        f.write(rgb.tobytes())


def shortest_edge_size(width, height, size):  # transformers' get_resize_output_image_size, as (w, h)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(img, width, height):  # transformers' center_crop on an RGB image
    w, h = img.size
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return img.crop((left, top, left + width, top + height))
    nw, nh = max(width, w), max(height, h)
    canvas = Image.new("RGB", (nw, nh), (0, 0, 0))
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas.paste(img, (lp, tp))
    top, left = top + tp, left + lp
    return canvas.crop((max(0, left), max(0, top), min(nw, left + width), min(nh, top + height)))


def expand2square(img, color):  # LLaVA's
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), color)
    out.paste(img, (0, (w - h) // 2) if w > h else ((h - w) // 2, 0))
    return out


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def main():
    os.makedirs(OUT, exist_ok=True)
    base = picture(97, 61, 1)
    tall = picture(45, 70, 2)
    alpha = Image.new("L", base.size)
    alpha.putdata([(x * 7 + y * 3) % 256 for y in range(base.height) for x in range(base.width)])
    rgba = base.copy()
    rgba.putalpha(alpha)
    grey = base.convert("L")
    grey16 = Image.new("I", base.size)
    grey16.putdata([((x * 613 + y * 97) % 65536) if (x + y) % 3 else (x + y) for y in range(base.height) for x in range(base.width)])
    palette = base.quantize(colors=64)
    palette.info["transparency"] = 5

    sources = {
        "rgb.png": (base, {}),
        "rgba.png": (rgba, {}),
        "palette.png": (palette, {"transparency": 5}),
        "grey.png": (grey, {}),
        "grey_alpha.png": (Image.merge("LA", (grey, alpha)), {}),
        "grey16.png": (grey16, {}),
        "tall.png": (tall, {}),
        "rgb420.jpg": (base, {"quality": 85}),
        "rgb444.jpg": (base, {"quality": 92, "subsampling": 0}),
        "progressive.jpg": (base, {"quality": 80, "progressive": True}),
        "grey.jpg": (grey, {"quality": 90}),
        "cmyk.jpg": (base.convert("CMYK"), {"quality": 90}),
        "lossy.webp": (base, {"quality": 80}),
        "lossless.webp": (base, {"lossless": True}),
        "rgba.webp": (rgba, {"quality": 80}),
        "rgb.gif": (base.quantize(colors=200), {}),
        "interlaced.gif": (base.quantize(colors=32), {"interlace": True}),
    }
    for name, (img, options) in sources.items():
        path = os.path.join(OUT, name)
        img.save(path, **options)
        with Image.open(path) as opened:
            write_ppm(opened, path + ".ppm")

    # A valid PNG header declaring 100,000 x 100,000 pixels (and one empty IDAT):
    # decoders must refuse it before allocating.
    with open(os.path.join(OUT, "huge.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)))
        f.write(png_chunk(b"IDAT", zlib.compress(b"")))
        f.write(png_chunk(b"IEND", b""))

    cases = [
        ("rgb.png", 0, 40, 32, 32),     # shrink, square crop
        ("rgb.png", 0, 100, 90, 80),    # enlarge, oblong crop
        ("tall.png", 0, 30, 36, 50),    # a crop larger than the image on one side: zero padding
        ("tall.png", 1, 48, 48, 48),    # LLaVA's pad to square first
        ("rgb420.jpg", 1, 64, 64, 64),
        ("rgb420.jpg", 0, 336, 336, 336),  # CLIP ViT-L/14-336 as LLaVA-Llama-3 uses it
    ]
    lines = []
    for source, pad, edge, cw, ch in cases:
        with Image.open(os.path.join(OUT, source)) as opened:
            img = opened.convert("RGB")
        if pad:
            img = expand2square(img, tuple(int(m * 255) for m in CLIP_MEAN))
        img = img.resize(shortest_edge_size(img.width, img.height, edge), Image.BICUBIC)
        img = center_crop(img, cw, ch)
        ref = "clip-%s-pad%d-%d-%dx%d.png" % (source.replace(".", "_"), pad, edge, cw, ch)
        img.save(os.path.join(OUT, ref))
        lines.append("%s %d %d %d %d %s" % (source, pad, edge, cw, ch, ref))
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
