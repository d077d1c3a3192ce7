"""One class per method, composed from the components."""

from softcontrast.methods.base import ContrastiveMethod, StepOutput
from softcontrast.methods.fnc import FNC, FNCOnMoCo
from softcontrast.methods.moco import MoCoV2
from softcontrast.methods.sce import SCE
from softcontrast.methods.sane import SANE

__all__ = ["ContrastiveMethod", "FNC", "FNCOnMoCo", "MoCoV2", "SANE", "SCE", "StepOutput"]
