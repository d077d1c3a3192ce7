"""Train FNC, False Negative Cancellation. Run: accelerate launch examples/fnc.py [--variant paper|moco] [flags].

``--variant paper`` (default) is the published multi-view objective (method ``fnc``);
``--variant moco`` is this library's adaptation to MoCo v2 (method ``fnc-moco``: one
anchor per image, detection views only for detection, a queue of keys).
"""

import argparse

from softcontrast.cli import train

if __name__ == "__main__":
    variant = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    variant.add_argument("--variant", default="paper", choices=["paper", "moco"])
    known, flags = variant.parse_known_args()
    train("fnc-moco" if known.variant == "moco" else "fnc", flags, description=__doc__)
