"""FNC: False Negative Cancellation (Huynh et al., WACV 2022).

``fnc`` is the published, multi-view objective; ``fnc-moco`` is this library's
adaptation to MoCo v2 (one anchor per image, support views only for detection).
"""

from __future__ import annotations

from dataclasses import dataclass

from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import Backbone
from softcontrast.methods.base import ContrastiveMethod, Pass
from softcontrast.methods.common import (
    DetectionSettings,
    MomentumSettings,
    QueueSettings,
)
from softcontrast.methods.registry import Setup
from softcontrast.settings import SettingError, check_choice, setting

#: Column layouts of FNC: the published one, and this library's earlier choice.
COLUMN_LAYOUTS = ("published", "library")


@dataclass
class FNCConfig(DetectionSettings, MomentumSettings):
    """FNC as published, the official defaults (S = 8, top-k 10, threshold 0.7, T 0.1, EMA 0.999, scale 2)."""

    momentum: float = setting(0.999, "EMA momentum of the momentum encoder")
    temperature: float = setting(0.1, "T of the loss")
    support_views: int = setting(8, "S, views per image beyond the first two (V = 2 + S); every view is an anchor")
    memory_size: int | None = setting(
        None, "view entries in the memory, the current block included (default 16 × the global batch, as "
              "published; 0 = none)")
    loss_scale: float = setting(2.0, "scale of the mean loss over anchors (2 as published, 1 = plain mean)")
    column_layout: str = setting(
        "published", "published: the memory counts the block, without memory the online views are the columns; "
                     "library: our earlier layout (the block in front of the memory, momentum columns)",
        choices=COLUMN_LAYOUTS)

    def __post_init__(self) -> None:
        check_choice("column_layout", self.column_layout, COLUMN_LAYOUTS, "FNC")
        if self.support_views < 0:
            raise SettingError("support_views", f"FNC support_views must be >= 0, got {self.support_views}")
        if self.memory_size is not None and self.memory_size < 0:
            raise SettingError("memory_size", f"FNC memory_size must be >= 0 view entries, got {self.memory_size}")


def build_fnc(config: FNCConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """Every one of ``V = 2 + S`` views an anchor: ``L = (scale/V)·Σ_a mean_i L_ia``.

    ``s = z_ia·c/T`` over ``c = [momentum views of the global batch (the block) |
    memory of view entries]`` (published: the memory's size counts the block);
    ``F_i = top_k {m : agg_v(ẑ_iv·c_m) > threshold}``, the image's own columns excluded;
    ``P_i`` = the other ``V − 1`` views of image ``i``, the anchor's own column masked;
    attract: ``L_ia = LSE_{m≠a} s_am − mean_{P_i ∪ F_i} s``; eliminate:
    ``L_ia = LSE_{m≠a, m∉F_i} s_am − mean_{P_i} s``. Without memory, as published, the
    online views are the columns and detectors (``ẑ = z``), with gradient. One
    deviation: memory entries of the row's own image are masked (the official code has
    no sample ids).
    """
    num_views = 2 + config.support_views
    views = [setup.view_at(moco_v2_cifar(), slot) for slot in range(num_views)]
    memory = 16 * setup.global_batch if config.memory_size is None else config.memory_size
    published = config.column_layout == "published"
    every_view = tuple(range(num_views))
    return ContrastiveMethod(
        backbone, setup.projector_for(backbone), config.detector(setup.bank), views=views,
        passes=(Pass(every_view, every_view),), memory_size=memory, temperature=config.temperature,
        momentum=config.momentum, final_momentum=config.final_momentum, memory_counts_block=published,
        online_columns=published and memory == 0, loss_scale=config.loss_scale, memory_setting="memory_size",
    )


@dataclass
class FNCOnMoCoConfig(DetectionSettings, QueueSettings):
    """FNC on MoCo v2 (this library's adaptation), defaults for CIFAR-sized data on one GPU.

    The paper (ImageNet) detects with S = 8 views; here 4 (each costs one momentum
    pass, and a 4096-key queue holds far fewer same-class candidates than ImageNet
    batches need), with the paper's top-k, threshold and strategy.
    """

    temperature: float = setting(0.2, "τ of the loss (MoCo v2)")
    detection_views: int = setting(4, "momentum embeddings per image that detect false negatives, the key included")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detection_views < 1:
            raise SettingError("detection_views",
                               f"FNC on MoCo needs detection_views >= 1 (the key counts as one), got "
                               f"{self.detection_views}")


def build_fnc_on_moco(config: FNCOnMoCoConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    """MoCo v2's step with FNC's targets: ``C = [k_i | Q]``; ``F_i = top_k {j ∈ Q unmasked :
    agg_s(u_is·C_j) > threshold}`` with ``u_i`` the key and ``detection_views − 1`` more
    momentum views; eliminate: ``mask ∪= F_i``, target ``e_pos``; attract: target
    uniform over ``{pos} ∪ F_i``. The extra detection views are momentum views like the key: the key's recipe."""
    query_view, key_view = setup.view_at(moco_v2_cifar(), 0), setup.view_at(moco_v2_cifar(), 1)
    return ContrastiveMethod(
        backbone, setup.projector_for(backbone), config.detector(setup.bank), views=[query_view, key_view],
        passes=config.passes, memory_size=config.queue_size, temperature=config.temperature,
        momentum=config.momentum, final_momentum=config.final_momentum, batch_negatives=False,
        detection_views=config.detection_views - 1, detection_view=key_view,
    )
