#!/usr/bin/python3
"""Reference pixels for tests/image_test.cc, computed with Debian's Pillow and numpy.

Usage: image_oracle.py OUT_DIR VIT_DIGITS_DIR

Writes test images of every mode the decoder must handle (PNG: RGB, RGBA, L,
LA, 1/2/4-bit gray, 16-bit gray/gray+alpha/RGB/RGBA, palette with and without
tRNS, gray and RGB with tRNS; JPEG: 4:2:0, 4:4:4, gray, progressive, CMYK),
image processor configs (ViT fixed size with every PIL filter, CLIP shortest
edge + center crop, a crop larger than the resized image), and for every
image its RGB pixels and for every (image, config) the uint8 image after
resize + crop and the float32 pixel_values, as transformers computes them.

`preprocess` mirrors transformers' slow image processors step by step:
  - transformers/image_utils.py load_image: PIL.ImageOps.exif_transpose,
    then image_transforms.convert_to_rgb (image.convert("RGB")), to_numpy_array;
  - ViTImageProcessor.resize / CLIPImageProcessor.resize
    (models/vit/image_processing_vit.py, models/clip/image_processing_clip.py)
    -> image_transforms.get_resize_output_image_size (shortest edge:
    int(size * long / short)) -> image_transforms.resize: a uint8 array goes
    to PIL unscaled (_rescale_for_pil_conversion is False for uint8),
    PIL.Image.resize((width, height), resample), back to a uint8 array;
  - image_transforms.center_crop (offsets (in - crop) // 2, zero padding);
  - image_transforms.rescale: image.astype(float64) * scale -> float32;
  - image_transforms.normalize: mean/std as float32 arrays, (x - mean) / std;
  - to_channel_dimension_format(FIRST): transpose to CHW.
"""
import json
import math
import os
import shutil
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageOps

OUT, VIT_DIGITS = sys.argv[1], sys.argv[2]
IMG_DIR = os.path.join(OUT, "images")
os.makedirs(IMG_DIR, exist_ok=True)
rng = np.random.default_rng(20261202)


def smooth_noise(h, w, c, lo=0, hi=255):
    """Gradients, a sharp edge and noise: something resampling can get wrong."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((h, w, c), dtype=np.float64)
    for k in range(c):
        base = (np.sin(x / (3.0 + k) + k) + np.cos(y / (5.0 + 2 * k))) * 0.25 + 0.5
        base += (x > w // 2) * 0.3 * ((-1) ** k)
        base += rng.normal(0, 0.08, size=(h, w))
        out[..., k] = base
    out = np.clip(out, 0, 1)
    return lo + out * (hi - lo)


def write_png(path, width, height, color_type, bit_depth, rows):
    """A PNG with the given packed rows (Pillow cannot write 16-bit RGB(A)/LA
    nor 2/4-bit gray)."""
    raw = b"".join(b"\x00" + r for r in rows)

    def chunk(tag, data):
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) +
                chunk(b"IEND", b""))


def pack_low_bits(values, bits):
    """Rows of gray values < 2**bits packed MSB first."""
    rows = []
    per_byte = 8 // bits
    for row in values:
        out = bytearray()
        for i in range(0, len(row), per_byte):
            byte = 0
            for j in range(per_byte):
                v = int(row[i + j]) if i + j < len(row) else 0
                byte |= v << (8 - bits * (j + 1))
            out.append(byte)
        rows.append(bytes(out))
    return rows


images = []  # file names under images/


def save(name, im, **kw):
    im.save(os.path.join(IMG_DIR, name), **kw)
    images.append(name)


# 8-bit PNG modes through Pillow.
save("rgb_37x23.png", Image.fromarray(smooth_noise(23, 37, 3).astype(np.uint8), "RGB"))
save("rgb_300x200.png", Image.fromarray(smooth_noise(200, 300, 3).astype(np.uint8), "RGB"))
save("rgb_7x5.png", Image.fromarray(smooth_noise(5, 7, 3).astype(np.uint8), "RGB"))
save("gray_45x60.png", Image.fromarray(smooth_noise(60, 45, 1)[..., 0].astype(np.uint8), "L"))
rgba = smooth_noise(30, 50, 4).astype(np.uint8)
save("rgba_50x30.png", Image.fromarray(rgba, "RGBA"))
save("la_33x41.png", Image.fromarray(smooth_noise(41, 33, 2).astype(np.uint8), "LA"))
save("bilevel_40x24.png", Image.fromarray(smooth_noise(24, 40, 1)[..., 0] > 128).convert("1"))
pal = Image.fromarray(smooth_noise(40, 40, 3).astype(np.uint8), "RGB").quantize(colors=16)
save("palette_40x40.png", pal)
save("palette_trns_40x40.png", pal, transparency=bytes([0, 128] + [255] * 14))
save("gray_trns_20x30.png", Image.fromarray(smooth_noise(30, 20, 1)[..., 0].astype(np.uint8), "L"),
     transparency=100)
save("rgb_trns_25x25.png", Image.fromarray(smooth_noise(25, 25, 3).astype(np.uint8), "RGB"),
     transparency=(10, 20, 30))

# Depths Pillow does not write.
g2 = smooth_noise(13, 19, 1, 0, 3.999)[..., 0].astype(int)
write_png(os.path.join(IMG_DIR, "gray2_19x13.png"), 19, 13, 0, 2, pack_low_bits(g2, 2))
g4 = smooth_noise(17, 21, 1, 0, 15.999)[..., 0].astype(int)
write_png(os.path.join(IMG_DIR, "gray4_21x17.png"), 21, 17, 0, 4, pack_low_bits(g4, 4))
images += ["gray2_19x13.png", "gray4_21x17.png"]
# 16-bit gray: the left half small values (below and above 255), the right
# half the full range, so that clamping and scaling would differ.
g16 = smooth_noise(26, 34, 1, 0, 65535)[..., 0]
g16[:, :17] = smooth_noise(26, 17, 1, 0, 600)[..., 0]
g16 = g16.astype(">u2")
write_png(os.path.join(IMG_DIR, "gray16_34x26.png"), 34, 26, 0, 16, [r.tobytes() for r in g16])
for name, ct, ch in (("rgb16_31x22.png", 2, 3), ("rgba16_22x31.png", 6, 4), ("la16_18x27.png", 4, 2)):
    w, h = (int(s) for s in name.split("_")[1][:-4].split("x"))
    a = smooth_noise(h, w, ch, 0, 65535).astype(">u2")
    write_png(os.path.join(IMG_DIR, name), w, h, ct, 16, [r.tobytes() for r in a])
    images.append(name)
images.append("gray16_34x26.png")

# JPEG through Pillow (libjpeg-turbo).
photo = Image.fromarray(smooth_noise(48, 64, 3).astype(np.uint8), "RGB")
save("photo420_64x48.jpg", photo, quality=90)
save("photo444_64x48.jpg", photo, quality=95, subsampling=0)
save("progressive_64x48.jpg", photo, quality=85, progressive=True)
save("gray_50x70.jpg", Image.fromarray(smooth_noise(70, 50, 1)[..., 0].astype(np.uint8), "L"),
     quality=90)
save("cmyk_30x20.jpg", Image.fromarray(smooth_noise(20, 30, 4).astype(np.uint8), "CMYK"),
     quality=92)

# EXIF orientations, which transformers' load_image applies
# (PIL.ImageOps.exif_transpose) before convert("RGB").
small = Image.fromarray(smooth_noise(9, 14, 3).astype(np.uint8), "RGB")
for orientation in range(1, 9):
    exif = Image.Exif()
    exif[0x0112] = orientation
    save(f"exif{orientation}_14x9.jpg", small, quality=95, exif=exif.tobytes())
exif = Image.Exif()
exif[0x0112] = 6
save("exif6_14x9.png", small, exif=exif.tobytes())

# The demo model's samples.
for f in sorted(os.listdir(os.path.join(VIT_DIGITS, "samples"))):
    if f.endswith(".png"):
        shutil.copy(os.path.join(VIT_DIGITS, "samples", f), os.path.join(IMG_DIR, "digits_" + f))
        images.append("digits_" + f)

# Processor configs, as preprocessor_config.json files.
IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
configs = {}
with open(os.path.join(VIT_DIGITS, "preprocessor_config.json")) as f:
    configs["vit_digits"] = json.load(f)
for resample, name in ((0, "nearest"), (1, "lanczos"), (2, "bilinear"), (3, "bicubic"),
                       (4, "box"), (5, "hamming")):
    configs["vit_48x64_" + name] = {
        "image_processor_type": "ViTImageProcessor", "do_resize": True, "do_rescale": True,
        "do_normalize": True, "size": {"height": 48, "width": 64}, "resample": resample,
        "image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD,
        "rescale_factor": 0.00392156862745098}
configs["vit_20x45_downscale"] = {"image_processor_type": "ViTImageProcessor",
                                  "size": {"height": 20, "width": 45}, "resample": 2}
configs["vit_224_defaults"] = {"image_processor_type": "ViTImageProcessor"}
configs["clip_24"] = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 24},
                      "crop_size": {"height": 24, "width": 24}, "do_convert_rgb": True}
configs["clip_int_sizes"] = {"feature_extractor_type": "CLIPFeatureExtractor", "size": 30,
                             "crop_size": 26, "resample": 3}
configs["clip_pad"] = {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 16},
                       "crop_size": {"height": 20, "width": 13}}
configs["vit_no_resize"] = {"image_processor_type": "ViTImageProcessor", "do_resize": False,
                            "do_normalize": False}
os.makedirs(os.path.join(OUT, "configs"), exist_ok=True)
for name, cfg in configs.items():
    d = os.path.join(OUT, "configs", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
        json.dump(cfg, f)

CLIP_DEFAULTS = dict(size={"shortest_edge": 224}, resample=3, do_center_crop=True,
                     crop_size={"height": 224, "width": 224},
                     image_mean=[0.48145466, 0.4578275, 0.40821073],
                     image_std=[0.26862954, 0.26130258, 0.27577711])
VIT_DEFAULTS = dict(size={"height": 224, "width": 224}, resample=2, do_center_crop=False,
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def settings(cfg):
    clip = "CLIP" in cfg.get("image_processor_type", cfg.get("feature_extractor_type", ""))
    s = dict(CLIP_DEFAULTS if clip else VIT_DEFAULTS)
    s.update(do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
    s.update({k: v for k, v in cfg.items() if k in s or k in ("crop_size",)})
    # image_processing_utils.get_size_dict
    if isinstance(s["size"], int):
        s["size"] = {"shortest_edge": s["size"]} if clip else {"height": s["size"], "width": s["size"]}
    if isinstance(s.get("crop_size"), int):
        s["crop_size"] = {"height": s["crop_size"], "width": s["crop_size"]}
    return s


def preprocess(im, cfg):
    s = settings(cfg)
    im = ImageOps.exif_transpose(im)  # image_utils.load_image
    if im.mode != "RGB":  # image_transforms.convert_to_rgb
        im = im.convert("RGB")
    arr = np.array(im)  # to_numpy_array: uint8, HWC
    if s["do_resize"]:
        size = s["size"]
        if "shortest_edge" in size:  # get_resize_output_image_size(default_to_square=False)
            h, w = arr.shape[:2]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            out_h, out_w = (new_long, new_short) if w <= h else (new_short, new_long)
        else:
            out_h, out_w = size["height"], size["width"]
        arr = np.array(Image.fromarray(arr).resize((out_w, out_h), resample=s["resample"]))
    if s["do_center_crop"]:  # image_transforms.center_crop
        ch, cw = s["crop_size"]["height"], s["crop_size"]["width"]
        h, w = arr.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        if top >= 0 and left >= 0 and top + ch <= h and left + cw <= w:
            arr = arr[top:top + ch, left:left + cw]
        else:
            nh, nw = max(ch, h), max(cw, w)
            padded = np.zeros((nh, nw, 3), dtype=arr.dtype)
            tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
            padded[tp:tp + h, lp:lp + w] = arr
            top, left = top + tp, left + lp
            arr = padded[max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw)]
    resized = np.ascontiguousarray(arr)
    x = resized
    if s["do_rescale"]:  # image_transforms.rescale
        x = (x.astype(np.float64) * s["rescale_factor"]).astype(np.float32)
    if s["do_normalize"]:  # image_transforms.normalize
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        mean = np.array(s["image_mean"], dtype=x.dtype)
        std = np.array(s["image_std"], dtype=x.dtype)
        x = (x - mean) / std
    x = x.astype(np.float32).transpose(2, 0, 1)  # channels first
    return resized, np.ascontiguousarray(x)


manifest = {"pillow": Image.__version__, "numpy": np.__version__, "images": [], "cases": []}
for name in images:
    im = Image.open(os.path.join(IMG_DIR, name))
    rgb = np.array(ImageOps.exif_transpose(im).convert("RGB"))
    rgb_file = name + ".rgb"
    rgb.tofile(os.path.join(OUT, rgb_file))
    manifest["images"].append({"file": "images/" + name, "mode": im.mode, "width": rgb.shape[1],
                               "height": rgb.shape[0], "rgb": rgb_file})
    for cname, cfg in configs.items():
        resized, pixels = preprocess(Image.open(os.path.join(IMG_DIR, name)), cfg)
        base = f"{name}.{cname}"
        resized.tofile(os.path.join(OUT, base + ".resized"))
        pixels.astype("<f4").tofile(os.path.join(OUT, base + ".pixels"))
        manifest["cases"].append({"image": "images/" + name, "config": "configs/" + cname,
                                  "height": int(resized.shape[0]), "width": int(resized.shape[1]),
                                  "resized": base + ".resized", "pixels": base + ".pixels"})
with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
print(f"image_oracle: Pillow {Image.__version__}, numpy {np.__version__}: "
      f"{len(images)} images, {len(manifest['cases'])} cases in {OUT}")
