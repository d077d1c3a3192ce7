"""Train SANE, self-labeling refinement + momentum mixup. Run: accelerate launch examples/sane.py [flags]."""

from softcontrast.cli import train

if __name__ == "__main__":
    train("sane", description=__doc__)
