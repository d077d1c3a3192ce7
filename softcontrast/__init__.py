"""softcontrast: contrastive self-supervised learning with repaired labels."""

__version__ = "0.1.0"
