"""Train SCE, Similarity Contrastive Estimation. Run: accelerate launch examples/sce.py [flags]."""

from softcontrast.cli import train

if __name__ == "__main__":
    train("sce", description=__doc__)
