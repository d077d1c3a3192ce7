"""SANE: self-labeling refinement + momentum mixup (Zhou et al., NeurIPS 2021)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from softcontrast.components.augment import ViewRecipe, moco_v2_cifar
from softcontrast.components.backbones import Backbone
from softcontrast.components.mixers import MomentumMixup
from softcontrast.components.targets import InfoNCE, SelfLabelingRefinery
from softcontrast.methods.base import ContrastiveMethod, MixedTerm
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import SettingError, check_choice, setting

#: The views SANE's momentum mixup can mix with.
MIXUP_VIEWS = ("weak", "strong")


@dataclass
class SANEConfig(QueueSettings):
    """SANE, the paper's CIFAR-10 settings. The paper's ablations: ``use_q=False`` is "p
    only", ``use_p=False`` "q only", both ``False`` "mixup only", ``mixup=False`` "no mixup"."""

    temperature: float = setting(0.2, "τ of the contrastive loss")
    tau_prime: float = setting(0.8, "τ′ in (0, 1]: p and q use τ·τ′")
    mu_start: float = setting(0.0, "m1, confidence µ at the first step")
    mu_end: float = setting(1.0, "m2 >= m1, confidence µ at the last step")
    lam: float = setting(0.5, "λ in [0, 1], weight of the mixup loss")
    mixup_kappa: float = setting(2.0, "κ of θ ~ Beta(κ, κ)")
    mixup_view: str = setting("weak", "mix with the partner's key view (weak) or a strongly augmented view (strong)",
                              choices=MIXUP_VIEWS)
    per_sample_theta: bool = setting(False, "one θ per sample instead of one per batch (an open detail)")
    use_p: bool = setting(True, "keep p in the refined label (off: the q-only ablation)", flag="p")
    use_q: bool = setting(True, "keep q in the refined label (off: the p-only ablation)", flag="q")
    mixup: bool = setting(True, "mix the queries (off: contrast x itself against the refined label)")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("mixup_view", self.mixup_view, MIXUP_VIEWS, "SANE")


def build_sane(config: SANEConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """``L = (1 − λ)·L_c(x, y) + λ·L_c(x′, y′)`` (eq. 9) over ``B̄ = [gathered batch keys | Q]``.

    ``y`` one-hot; ``ȳ = (1 − α − β)·y + α·p + β·q`` the refined label (confidence ``µ_t``
    rising from ``m1`` to ``m2``); momentum mixup ``x′_i = θ·x_i + (1 − θ)·x̃_π(i)`` (the
    partner's key view, or with ``mixup_view="strong"`` a strong view of it) and
    ``y′_i = θ·ȳ_i + (1 − θ)·ȳ_π(i)``, ``θ ~ Beta(κ, κ)``. Without mixup ``x′ = x``,
    ``y′ = ȳ``; with ``λ = 0`` the loss is InfoNCE over ``B̄``.
    """
    query_view, key_view = setup.view_at(moco_v2_cifar(), 0), setup.view_at(moco_v2_cifar(), 1)
    views = [query_view, key_view]
    source = None
    if config.mixup_view == "strong":
        views.append(strong_mixup_view(query_view))
        source = 2
    mixed_view = views[1 if source is None else source]
    if config.mixup and config.lam > 0 and query_view.size != mixed_view.size:
        raise SettingError(
            "view_size", f"SANE momentum mixup adds the pixels of the query view and the partner's "
                         f"{config.mixup_view} view, so they need one size, got {query_view.size} and {mixed_view.size}")
    mixer = MomentumMixup(config.mixup_kappa, config.per_sample_theta)
    refinery = SelfLabelingRefinery(config.temperature, config.tau_prime, config.mu_start, config.mu_end,
                                    config.use_p, config.use_q)
    return ContrastiveMethod(
        backbone, setup.projector_for(backbone), InfoNCE(), views=views, passes=config.passes,
        memory_size=config.queue_size, temperature=config.temperature, momentum=config.momentum,
        final_momentum=config.final_momentum, mixed=MixedTerm(config.lam, refinery, mixer if config.mixup else None,
                                                              source),
    )


def strong_mixup_view(view: ViewRecipe) -> ViewRecipe:
    """A stronger version of ``view`` for the strong mixup variant.

    This library's choice, not a recipe taken from the paper: crops down to 8 % of the
    image, colour jitter always on, grayscale 0.2, Gaussian blur 0.5 and solarize 0.2,
    at the size of ``view``.
    """
    return replace(view, crop_scale=(0.08, 1.0), jitter_p=1.0, gray_p=0.2, blur_p=0.5, solarize_p=0.2)
