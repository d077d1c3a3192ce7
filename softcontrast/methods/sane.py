"""SANE: self-labeling refinement + momentum mixup (Zhou et al., NeurIPS 2021)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor, nn

from softcontrast.components.augment import BatchAugment, ViewRecipe, moco_v2_cifar, to_float
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.columns import LogitColumns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.mixers import Mixer, MixParams, MomentumMixup
from softcontrast.components.targets import SelfLabelingRefinery, Targets
from softcontrast.methods.common import QueueSettings
from softcontrast.methods.registry import Setup
from softcontrast.settings import setting
from softcontrast.methods.base import Contrast, ContrastiveMethod, StepOutput

MixupView = Literal["weak", "strong"]


class SANE(ContrastiveMethod):
    """SANE. ``L = (1 − λ)·L_c(x, y) + λ·L_c(x′, y′)`` (eq. 9).

    Both terms score the online embeddings against ``B̄ = [gathered batch keys | Q]``:
    ``L_c(x, y) = −mean_i Σ_k y_ik · log softmax(f(x_i)·B̄ᵀ/τ)_k``.

    * ``y`` is the one-hot label on the row's own key.
    * ``ȳ`` is the refined label of
      :class:`~softcontrast.components.targets.SelfLabelingRefinery`:
      ``(1 − α − β)·y + α·p + β·q`` with ``p, q`` the key's distributions at
      temperature ``τ·τ′`` and the confidence ``µ_t`` rising from ``m1`` to ``m2``.
    * Momentum mixup: ``θ ~ Beta(κ, κ)``, ``π`` a permutation of the global batch,
      ``x′_i = θ·x_i + (1 − θ)·x̃_π(i)`` (the query view of ``i`` and the *key view*
      of its partner, in pixels) and ``y′_i = θ·ȳ_i + (1 − θ)·ȳ_π(i)``.

    ``mixup_view="strong"`` is the paper's strong variant: a strongly augmented view
    of each image (``strong_view``) replaces ``x̃`` in the mixup; the labels still
    come from the weak key view.

    Ablations (the paper's): ``use_q=False`` is "p only", ``use_p=False`` "q only",
    both ``False`` "mixup only" (``y′`` mixes one-hot labels), and ``mixup=False``
    "no mixup": then ``x′ = x`` and ``y′ = ȳ`` (``θ = 1``), i.e.
    ``L = (1 − λ)·L_c(x, y) + λ·L_c(x, ȳ)``. With ``λ = 0`` the loss is InfoNCE
    over ``[gathered batch keys | Q]``.

    Open details made parameters: ``θ`` per batch (default, the paper's text) or
    per sample (``per_sample_theta``), and the strong recipe. The defaults are the
    paper's CIFAR-10 settings; both views follow the MoCo v2 CIFAR recipe by default.

    Args:
        backbone: feature extractor.
        projector: head on the features (default: 512-512-128 MLP with BN).
        tau: ``τ`` of the contrastive loss (default 0.2).
        tau_prime: ``τ′`` in ``(0, 1]``; ``p`` and ``q`` use ``τ·τ′`` (default 0.8).
        mu_start: ``m1 >= 0``, confidence at the first step (default 0).
        mu_end: ``m2 >= m1``, confidence at the last step (default 1).
        lam: ``λ`` in ``[0, 1]``, weight of the mixup term (default 0.5).
        mixup_kappa: ``κ > 0`` of ``θ ~ Beta(κ, κ)`` (default 2).
        per_sample_theta: one ``θ_i`` per sample instead of one per batch.
        mixup_view: ``"weak"`` mixes with the partner's key view, ``"strong"`` with a
            strongly augmented view of the partner.
        strong_view: recipe of the strong view (default: :func:`strong_mixup_view`
            of the query view); used only with ``"strong"``.
        use_p: keep ``p`` in the refined label.
        use_q: keep ``q`` in the refined label.
        mixup: mix the queries; ``False`` contrasts ``x`` itself against ``ȳ``.
        mixer: mixer to use instead of ``MomentumMixup(mixup_kappa, per_sample_theta)``.
        queue_size: K (default 4096).
        momentum: EMA momentum (default 0.99).
        final_momentum: momentum at the end (cosine schedule); ``None`` = constant.
        query_view: query view recipe (default: MoCo v2 CIFAR).
        key_view: key view recipe (default: MoCo v2 CIFAR).
        symmetric: average the loss over both view orders.
        **kwargs: further :class:`ContrastiveMethod` options.

    Raises:
        ValueError: a hyperparameter outside its range, or mixed views of different
            sizes (the message names the flag).
    """

    def __init__(
        self,
        backbone: Backbone,
        projector: nn.Module | None = None,
        tau: float = 0.2,
        tau_prime: float = 0.8,
        mu_start: float = 0.0,
        mu_end: float = 1.0,
        lam: float = 0.5,
        mixup_kappa: float = 2.0,
        per_sample_theta: bool = False,
        mixup_view: MixupView = "weak",
        strong_view: ViewRecipe | None = None,
        use_p: bool = True,
        use_q: bool = True,
        mixup: bool = True,
        mixer: Mixer | None = None,
        queue_size: int = 4096,
        momentum: float = 0.99,
        final_momentum: float | None = None,
        query_view: ViewRecipe | None = None,
        key_view: ViewRecipe | None = None,
        symmetric: bool = False,
        **kwargs,
    ):
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"SANE lam (--lam) must lie in [0, 1], got {lam}")
        if not mixup_kappa > 0:
            raise ValueError(f"SANE mixup_kappa (--mixup-kappa) must be > 0, got {mixup_kappa}")
        if mixup_view not in ("weak", "strong"):
            raise ValueError(f"SANE mixup_view (--mixup-view) must be 'weak' or 'strong', got {mixup_view!r}")
        query_view, key_view = query_view or moco_v2_cifar(), key_view or moco_v2_cifar()
        strong_view = strong_view or strong_mixup_view(query_view)
        mixed_view = key_view if mixup_view == "weak" else strong_view
        if mixup and lam > 0 and query_view.size != mixed_view.size:
            raise ValueError(
                f"SANE momentum mixup adds the pixels of the query view and the partner's {mixup_view} view "
                f"(--mixup-view {mixup_view}), so they need one size (--view-size), "
                f"got {query_view.size} and {mixed_view.size}"
            )
        super().__init__(
            backbone,
            projector or projector_for(backbone),
            SelfLabelingRefinery(tau, tau_prime, mu_start, mu_end, use_p, use_q),
            query_view=query_view,
            key_view=key_view,
            queue_size=queue_size,
            temperature=tau,
            momentum=momentum,
            final_momentum=final_momentum,
            in_batch_keys=True,
            symmetric=symmetric,
            **kwargs,
        )
        self.lam = float(lam)
        self.mixup_view = mixup_view
        self.strong_augment = BatchAugment(strong_view) if mixup_view == "strong" else None
        self.mixer: Mixer | None = (mixer or MomentumMixup(mixup_kappa, per_sample_theta)) if mixup else None

    @property
    def refinery(self) -> SelfLabelingRefinery:
        """The refined-label builder (holds ``µ_t``)."""
        return self.target_builder  # type: ignore[return-value]

    def forward(self, images: Tensor, ids: Tensor) -> StepOutput:
        """One SANE step on ``uint8`` images ``B×3×H×W`` with sample ``ids``."""
        images = to_float(images)
        streams = self.streams.at(images.device)
        query_views, key_views = self.query_augment(images, streams.local), self.key_augment(images, streams.local)
        strong_views = self.strong_augment(images, streams.local) if self.strong_augment is not None else None
        mixing = None
        if self.mixer is not None and self.lam > 0:
            mixing = self.mixer.sample(images.shape[0], images.device, streams)
        return self.sane_step(query_views, key_views, ids, strong_views, mixing)

    def sane_step(
        self, query_views: Tensor, key_views: Tensor, ids: Tensor, strong_views: Tensor | None = None,
        mixing: MixParams | None = None,
    ) -> StepOutput:
        """The SANE loss of given views and mixing draw (both view orders if ``symmetric``).

        Args:
            query_views: ``B×3×H×W`` query views ``x``.
            key_views: ``B×3×H×W`` key views ``x̃``.
            ids: ``B`` sample ids.
            strong_views: strong views (``mixup_view="strong"`` only).
            mixing: :class:`~softcontrast.components.mixers.MixParams` of the mixup
                (``None`` without mixup).
        """
        self._pending = []
        parts = self.sane_losses(query_views, key_views, ids, strong_views, mixing)
        if self.symmetric:
            swapped = self.sane_losses(key_views, query_views, ids, strong_views, mixing)
            parts = {name: (parts[name] + swapped[name]) / 2 for name in parts}
        return StepOutput(parts["loss"], {name: value.detach() for name, value in parts.items()})

    def sane_losses(
        self, query_views: Tensor, key_views: Tensor, ids: Tensor, strong_views: Tensor | None, mixing: MixParams | None
    ) -> dict[str, Tensor]:
        """``(1 − λ)·L_c(x, y) + λ·L_c(x′, y′)`` for one view order, with its parts and metrics."""
        keys = self.embed_keys(key_views)
        self._pending.append((keys, ids))
        columns = LogitColumns.build(keys, ids, self.queue, in_batch=True)
        one_hot = Targets(columns.positive_one_hot(), columns.mask)
        query = self.online(self._prepare(query_views))
        logits = columns.scores(query) / self.temperature
        loss_c = soft_cross_entropy(logits, one_hot.target, one_hot.mask)
        refined = self.refinery(columns)
        parts = {**self._metrics(Contrast(query, columns, refined, logits, loss_c)), "loss_c": loss_c, "loss": loss_c}
        parts["mu"] = self.refinery.mu.detach().clone()
        if self.lam == 0:
            return parts
        if self.mixer is None:
            mixed_logits, mixed = logits, refined
        else:
            source = key_views if self.mixup_view == "weak" else strong_views
            virtual = self.mixer.mix_inputs(query_views, source, mixing)
            mixed_logits = columns.scores(self.online(self._prepare(virtual))) / self.temperature
            mixed = self.mixer.mix_targets(refined, mixing)
        loss_mix = soft_cross_entropy(mixed_logits, mixed.target, mixed.mask)
        parts["loss_mix"] = loss_mix
        parts["loss"] = (1 - self.lam) * loss_c + self.lam * loss_mix
        return parts

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA update and enqueue, then ``µ ← µ_{t+1}`` for the next step."""
        super().after_optimizer_step(step, total_steps)
        self.refinery.set_step(step + 1, total_steps)


def strong_mixup_view(view: ViewRecipe) -> ViewRecipe:
    """A stronger version of ``view`` for the strong mixup variant.

    This library's choice, not a recipe taken from the paper (pass ``strong_view`` to
    use another): crops down to 8 % of the image, colour jitter always on,
    grayscale 0.2, Gaussian blur 0.5 and solarize 0.2, at the size of ``view``.
    """
    return replace(view, crop_scale=(0.08, 1.0), jitter_p=1.0, gray_p=0.2, blur_p=0.5, solarize_p=0.2)


@dataclass
class SANEConfig(QueueSettings):
    """SANE (Zhou et al., NeurIPS 2021), the paper's CIFAR-10 defaults."""

    temperature: float = setting(0.2, "τ of the contrastive loss")
    tau_prime: float = setting(0.8, "τ′ in (0, 1]: p and q use τ·τ′")
    mu_start: float = setting(0.0, "m1, confidence µ at the first step")
    mu_end: float = setting(1.0, "m2 >= m1, confidence µ at the last step")
    lam: float = setting(0.5, "λ in [0, 1], weight of the mixup loss")
    mixup_kappa: float = setting(2.0, "κ of θ ~ Beta(κ, κ)")
    mixup_view: str = setting("weak", "mix with the partner's key view (weak) or a strongly augmented view (strong)",
                              choices=("weak", "strong"))
    per_sample_theta: bool = setting(False, "one θ per sample instead of one per batch")
    use_p: bool = setting(True, "keep p in the refined label (off: the q-only ablation)", flag="p")
    use_q: bool = setting(True, "keep q in the refined label (off: the p-only ablation)", flag="q")
    mixup: bool = setting(True, "mix the queries (off: contrast x itself against the refined label)")


def build_sane(config: SANEConfig, backbone: Backbone, setup: Setup) -> ContrastiveMethod:
    return SANE(backbone, setup.projector_for(backbone), tau=config.temperature, tau_prime=config.tau_prime,
                mu_start=config.mu_start, mu_end=config.mu_end, lam=config.lam, mixup_kappa=config.mixup_kappa,
                per_sample_theta=config.per_sample_theta, mixup_view=config.mixup_view, use_p=config.use_p,
                use_q=config.use_q, mixup=config.mixup, queue_size=config.queue_size, momentum=config.momentum,
                final_momentum=config.final_momentum, query_view=setup.view(moco_v2_cifar()),
                key_view=setup.view(moco_v2_cifar()), symmetric=config.symmetric)
