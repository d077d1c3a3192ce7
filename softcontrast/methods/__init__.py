"""The methods: presets of the one training step, registered by name.

``method_spec("sce")`` gives SCE's config dataclass and build
(:mod:`softcontrast.methods.registry`); ``method_spec("sce")(backbone)`` builds it
with the paper's defaults.
"""

from softcontrast.methods.base import ContrastiveMethod, MixedTerm, Pass, StepOutput
from softcontrast.methods.fnc import (
         FNCConfig,
         FNCOnMoCoConfig,
         build_fnc,
         build_fnc_on_moco,
)
from softcontrast.methods.moco import MoCoConfig, build_moco
from softcontrast.methods.registry import (
         MethodSpec,
         Setup,
         method_names,
         method_spec,
         register,
)
from softcontrast.methods.sane import SANEConfig, build_sane
from softcontrast.methods.sce import SCEConfig, build_sce

register("moco", MoCoConfig, build_moco, "MoCo v2: one-hot InfoNCE target against a momentum queue")
register("sce", SCEConfig, build_sce, "SCE: soft target λ·e_pos + (1−λ)·softmax(k·Cᵀ/τm) over the other columns")
register("fnc", FNCConfig, build_fnc,
         "FNC as published: every view an anchor; detected false negatives attracted or eliminated")
register("fnc-moco", FNCOnMoCoConfig, build_fnc_on_moco,
         "FNC on MoCo v2 (this library's adaptation): one anchor per image, detection views find false negatives")
register("sane", SANEConfig, build_sane, "SANE: refined labels (1−α−β)·y + α·p + β·q with momentum mixup")

__all__ = [
    "ContrastiveMethod", "FNCConfig", "FNCOnMoCoConfig", "MethodSpec", "MixedTerm", "MoCoConfig", "Pass",
    "SANEConfig", "SCEConfig", "Setup", "StepOutput", "build_fnc", "build_fnc_on_moco", "build_moco", "build_sane",
    "build_sce", "method_names", "method_spec", "register",
]
