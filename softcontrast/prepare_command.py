"""``softcontrast prepare SOURCE OUT --size S``: writes a prepared dataset (:mod:`softcontrast.data.prepared`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from softcontrast.data.prepared import DEFAULT_FORMAT, FORMATS, prepare
from softcontrast.data.splits import DataSourceError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``softcontrast prepare``."""
    parser = argparse.ArgumentParser(
        prog="softcontrast prepare",
        description="Write the images of a dataset once, fitted to --size, into memory-mapped files that "
                    "training reads as --dataset prepared:OUT (no file opened per image).",
    )
    parser.add_argument("source", help="imagefolder:<path>, hf:<id>, npz:<path> or digits")
    parser.add_argument("out", type=Path, help="the folder to write (new or empty)")
    parser.add_argument("--size", type=int, required=True,
                        help="at most 96: square images held in memory when training; above: the longer side's bound")
    parser.add_argument("--format", choices=FORMATS, default=DEFAULT_FORMAT,
                        help=f"pixels (raw RGB, fastest to read) or jpeg (re-encoded, ~10x smaller) "
                             f"(default: {DEFAULT_FORMAT})")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of --format jpeg (default: 90)")
    parser.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes that decode and encode (default: the CPU count, at most 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace a prepared dataset already in OUT")
    return parser


def main(argv: Sequence[str]) -> None:
    """Runs ``softcontrast prepare`` with ``argv`` (the words after ``prepare``); a bad source,
    size or output folder ends it with ``softcontrast prepare: error: ...`` and status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        prepare(args.source, args.out, args.size, args.format, args.num_workers, args.quality, args.overwrite,
                log=lambda line: print(line, file=sys.stderr, flush=True))
    except DataSourceError as error:
        parser.error(" ".join(str(error).split()))
    metadata = json.loads((args.out / "prepared.json").read_text())
    summary = {name: {"images": split["count"], "bytes_per_image": round(split["bytes"] / split["count"])}
               for name, split in metadata["splits"].items()}
    print(json.dumps({"prepared": str(args.out), "size": args.size, "format": args.format, "splits": summary,
                      "seconds": round(time.perf_counter() - start, 1)}))
    print(f"train with: --dataset prepared:{args.out}")
