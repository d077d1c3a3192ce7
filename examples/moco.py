"""Train MoCo v2 (the baseline). Run: accelerate launch examples/moco.py [flags]."""

from softcontrast.cli import train

if __name__ == "__main__":
    train("moco", description=__doc__)
