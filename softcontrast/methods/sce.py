"""SCE: Similarity Contrastive Estimation (Denize et al., WACV 2023)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from softcontrast.components.augment import ViewRecipe, sce_strong, sce_weak
from softcontrast.components.backbones import Backbone
from softcontrast.components.multiview import SmallCrops
from softcontrast.components.targets import SimilarityTargets
from softcontrast.components.view_recipes import SMALL_CROP_PRESETS, small_crop_recipes
from softcontrast.methods.base import ContrastiveMethod
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import SettingError, check_choice, setting


@dataclass
class SCEConfig(QueueSettings):
    """SCE, the official CIFAR-10 defaults."""

    lam: float = setting(0.5, "λ in [0, 1], weight of the one-hot part of the target")
    temperature: float = setting(0.1, "τ of the online distribution")
    tau_m: float = setting(0.05, "τm of the similarity target")
    in_batch_keys: bool = setting(False, "columns [all batch keys | queue] instead of [k_i | queue]")
    small_crops: int = setting(0, "multi-crop: small crops per image, each one more query with the image's target")
    small_crop_size: int | None = setting(None, "side of the small crops (default: view size × 96/224)")
    small_crop_scale: tuple[float, float] = setting((0.05, 0.14), "crop area range of the small crops")
    small_crops_preset: str = setting(
        "none", "named small crops of several sizes instead of small_crops/size/scale: sce-five-crops (SCE's "
        "official ImageNet multi-crop: 4 crops of 192/160/128/96 px at 224-px views, scales 0.172-0.86, "
        "0.143-0.715, 0.114-0.571, 0.086-0.429, the query view's recipe with blur p 0.5 and solarize p 0.2; "
        "sides follow the view size) | none",
        choices=("none", *SMALL_CROP_PRESETS))

    def crops(self, query_view: ViewRecipe) -> SmallCrops | None:
        """The small crops (``None`` without): with :attr:`small_crops_preset`, the preset's crops of the
        query recipe, one size each; else ``small_crops`` crops of the query recipe at ``small_crop_size``
        and ``small_crop_scale``."""
        if self.small_crops_preset != "none":
            check_choice("small_crops_preset", self.small_crops_preset, ("none", *SMALL_CROP_PRESETS), "SCE")
            if self.small_crops != 0:
                raise SettingError("small_crops", (
                    f"small_crops {self.small_crops} and small_crops_preset {self.small_crops_preset} both say "
                    "how many small crops to make: give one of them"))
            return SmallCrops.of(small_crop_recipes(self.small_crops_preset, query_view))
        if self.small_crops < 0:
            raise SettingError("small_crops", f"small_crops must be >= 0, got {self.small_crops}")
        low, high = self.small_crop_scale
        if not 0 < low <= high <= 1:
            raise SettingError("small_crop_scale", f"small_crop_scale must satisfy 0 < a <= b <= 1, got {low} {high}")
        if self.small_crops == 0:
            return None
        size = self.small_crop_size or max(1, round(query_view.size * 96 / 224))
        return SmallCrops(self.small_crops, replace(query_view, size=size, crop_scale=(low, high)))


def build_sce(config: SCEConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """``L = −Σ_j [λ·e_pos + (1−λ)·s_i]_j · log softmax(q_i·Cᵀ/τ)_j``, ``s_i = softmax_{j≠pos}(k_i·C_j/τm)``.

    Strong query view, weak key view (crop + flip), ``C = [k_i | Q]`` (or ``[all batch
    keys | Q]``); small crops are more queries with row ``i``'s target.
    """
    query_view, key_view = setup.view_at(sce_strong(), 0), setup.view_at(sce_weak(), 1)
    return ContrastiveMethod(
        backbone, setup.projector_for(backbone), SimilarityTargets(config.lam, config.tau_m),
        views=[query_view, key_view], passes=config.passes, memory_size=config.queue_size,
        temperature=config.temperature, momentum=config.momentum, final_momentum=config.final_momentum,
        batch_negatives=config.in_batch_keys, small_crops=config.crops(query_view),
    )
