"""Prepared-dataset formats side by side: read+crop images per second on one core, and bytes per image.

Test images are ImageNet-like photos: random crops, flips and resizes of the two real
photos scikit-learn ships (``load_sample_images``), saved as 500×375 (a quarter of
them 375×500) quality-90 JPEG files. Each is prepared (``softcontrast.data.prepared``)
in both formats at each ``--sizes`` bound, and one process with one thread then cuts
the training items of a 2-view step from it: ``RandomCrops`` with two 224-px
``CropSpec`` (scale 0.08-1), as training does. The original JPEG files (an
``imagefolder:`` source, decoded with ``draft``) are timed in the same rounds, so
every row has its ratio to them. Rounds interleave the variants; the median is reported.

Reported per variant: read+crop images/s per core, bytes per image (``images.bin``
over the count; the index adds 20 bytes plus the name), prepare images/s on one core,
and the ratios. ``default_format`` is the format ``prepare`` should default to by the
rule in ``choice_rule``.

Run: ``python benchmarks/prepared_format.py [--images 512 --sizes 256 --out benchmarks/results/prepared_format_cpu.json]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from softcontrast.data import CropSpec, FolderImages, ImageSource, RandomCrops
from softcontrast.data.images import list_image_folder
from softcontrast.data.prepared import FORMATS, PreparedImages, prepare, read_metadata

#: Side of ImageNet's typical photo (landscape; portrait photos are the transpose).
PHOTO = (500, 375)

#: How the default format follows from the measurement.
CHOICE_RULE = ("pixels is the default when its read+crop speed-up over jpeg (per core) is at least its growth in "
               "bytes per image: a data set that outgrows the page cache is then still read no slower from disk; "
               "otherwise jpeg")


def make_photos(folder: Path, count: int, seed: int = 0, quality: int = 90) -> None:
    """``count`` ImageNet-like JPEG photos in ``folder/<photo>/``, cut from scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(array) for array in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for index in range(count):
        which = index % len(photos)
        photo = photos[which]
        width, height = PHOTO if rng.random() < 0.75 else PHOTO[::-1]
        scale = rng.uniform(0.6, 1.0) * min(photo.width / width, photo.height / height)
        box_w, box_h = width * scale, height * scale
        left, top = rng.uniform(0, photo.width - box_w), rng.uniform(0, photo.height - box_h)
        image = photo.resize((width, height), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        (folder / f"photo{which}").mkdir(parents=True, exist_ok=True)
        image.save(folder / f"photo{which}" / f"{index:06d}.jpg", quality=quality)


def read_crop_rate(source: ImageSource, specs: list[CropSpec], epoch: int) -> float:
    """Images per second that one thread cuts the training crops of."""
    crops = RandomCrops(source, specs, seed=0)
    start = time.perf_counter()
    for index in range(len(crops)):
        crops[(index, epoch)]
    return len(crops) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="test photos")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="prepared size bounds")
    parser.add_argument("--crop", type=int, default=224, help="side of the two training crops")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median reported)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the jpeg format")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/prepared_format_cpu.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = [CropSpec(args.crop), CropSpec(args.crop)]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        make_photos(work / "photos", args.images)
        root = work / "photos"
        files = sorted(root.rglob("*.jpg"))
        variants: dict[str, ImageSource] = {"original JPEG files": FolderImages(root, *list_image_folder(root))}
        rows: dict[str, dict] = {"original JPEG files": {
            "variant": "original JPEG files", "size": None, "format": "jpeg files",
            "bytes_per_image": sum(f.stat().st_size for f in files) / len(files), "prepare_images_per_s": None}}
        for size in args.sizes:
            for format in FORMATS:
                name = f"{format} {size}"
                out = work / name.replace(" ", "_")
                start = time.perf_counter()
                prepare(f"imagefolder:{root}", out, size, format, quality=args.quality)
                seconds = time.perf_counter() - start
                split = read_metadata(out)["splits"]["train"]
                variants[name] = PreparedImages(out / "train", format, split["classes"])
                rows[name] = {"variant": name, "size": size, "format": format,
                              "bytes_per_image": split["bytes"] / split["count"],
                              "prepare_images_per_s": split["count"] / seconds}
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for round_ in range(args.rounds):
            for name, source in variants.items():
                rates[name].append(read_crop_rate(source, specs, epoch=round_))
    baseline = statistics.median(rates["original JPEG files"])
    for name, row in rows.items():
        row["read_crop_images_per_s_per_core"] = statistics.median(rates[name])
        row["vs_original_files"] = row["read_crop_images_per_s_per_core"] / baseline
    choices = {}
    for size in args.sizes:
        pixels, jpeg = rows[f"pixels {size}"], rows[f"jpeg {size}"]
        speedup = pixels["read_crop_images_per_s_per_core"] / jpeg["read_crop_images_per_s_per_core"]
        growth = pixels["bytes_per_image"] / jpeg["bytes_per_image"]
        choices[str(size)] = {"pixels_speedup_over_jpeg": speedup, "pixels_bytes_over_jpeg": growth,
                              "choice": "pixels" if speedup >= growth else "jpeg"}
    result = {
        "images": args.images,
        "photo": f"{PHOTO[0]}x{PHOTO[1]} quality-90 JPEG (crops of scikit-learn's sample photos)",
        "crops": f"2 x {args.crop} px, scale 0.08-1 (RandomCrops, one thread)",
        "rounds": args.rounds,
        "variants": list(rows.values()),
        "by_size": choices,
        "default_format": choices[str(args.sizes[0])]["choice"],
        "choice_rule": CHOICE_RULE,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "pillow": Image.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for row in rows.values():
        print(f"{row['variant']:>22}: {row['read_crop_images_per_s_per_core']:7.1f} images/s/core "
              f"({row['vs_original_files']:.2f}x files), {row['bytes_per_image'] / 1024:7.1f} KiB/image")
    print(json.dumps(choices))


if __name__ == "__main__":
    main()
