"""The run's settings that belong to no method: data and views, the model, devices and output.

With :class:`~softcontrast.training.TrainConfig` and a method's config, these
dataclasses hold every setting of a run; ``softcontrast train`` makes one flag per
field (:mod:`softcontrast.flags`). Their defaults are the general ones;
:data:`DIGITS_DEFAULTS` holds the values that fit the embedded digits data instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from softcontrast.components.augment import ViewRecipe
from softcontrast.settings import setting


@dataclass
class DataSettings:
    """The training data and the size and strength of the augmented views."""

    dataset: str = setting("digits", "digits | imagefolder:<path> | npz:<path> | hf:<id>")
    train_subset: int | None = setting(None, "train on this many random training images")
    image_size: int | None = setting(None, "resize images to this side (none: the source's)")
    view_size: int = setting(16, "side of the augmented views")
    crop_min_scale: float | None = setting(
        None, "smallest crop area of the random resized crop (none: the method's recipe)")
    flip_p: float | None = setting(None, "horizontal flip probability (none: the method's recipe)")

    def view(self, recipe: ViewRecipe) -> ViewRecipe:
        """``recipe`` at :attr:`view_size`, with the crop scale and flip chosen here (when set)."""
        recipe = replace(recipe, size=self.view_size)
        if self.crop_min_scale is not None:
            recipe = replace(recipe, crop_scale=(self.crop_min_scale, recipe.crop_scale[1]))
        if self.flip_p is not None:
            recipe = replace(recipe, flip_p=self.flip_p)
        return recipe


@dataclass
class ModelSettings:
    """The backbone and the projector head."""

    backbone: str = setting("resnet18", "backbone architecture", choices=("resnet18", "resnet34", "resnet50"))
    width: int = setting(64, "channels of the first ResNet stage (64 = standard)")
    cifar_stem: bool = setting(True, "CIFAR stem (3×3 conv, no max-pool); off: the ImageNet stem (7×7 conv + max-pool)")
    projector_hidden: int = setting(512, "hidden width of the projector")
    projector_out: int = setting(128, "output width of the projector")
    projector_layers: int = setting(2, "linear layers of the projector (1: a linear map)")


@dataclass
class RunSettings:
    """Devices, precision, the momentum encoder's batch norm and where the run writes."""

    precision: str = setting("no", "mixed precision", choices=("no", "fp16", "bf16"))
    cpu: bool = setting(False, "train on the CPU even if a GPU is visible")
    channels_last: bool = setting(False, "channels-last memory format for the encoders")
    shuffle_bn: bool = setting(
        False, "shuffle-BN for the momentum encoder: across processes, or split-BN on one process")
    split_bn_groups: int = setting(
        8, "batch-norm groups of the global batch under shuffle-BN (a multiple of the process count)")
    output_dir: str | None = setting(None, "where the run writes (none: runs/<method>)")
    tensorboard: bool = setting(False, "also log to TensorBoard in the output dir")


#: The defaults that fit the embedded 8×8 digits on two CPU cores in a few minutes, applied
#: when ``dataset`` is ``digits`` to each setting neither a flag nor ``--config`` gave (to
#: the method's settings too, where its config has the field). On digits the views are 12
#: pixels (8 lets the backbone learn less, 16 costs twice as much) with gentle crops and no
#: flips (a mirrored digit is another symbol), and the projector is linear, which leaves
#: the class structure in the backbone features that the kNN monitor reads (with a 2-layer
#: projector the backbone trails raw pixels within the budget); a narrow ResNet-18, a short
#: schedule at a high learning rate and a queue of 1024 keep the run to minutes.
DIGITS_DEFAULTS: dict[str, Any] = {
    "view_size": 12, "crop_min_scale": 0.8, "flip_p": 0.0, "width": 16, "projector_layers": 1,
    "epochs": 60, "batch_size": 128, "lr": 0.3, "checkpoint_every": 5, "queue_size": 1024,
}

#: Defaults of data settings whose value depends on the data: (digits, any other source).
DATA_DEFAULTS: dict[str, tuple[Any, Any]] = {"view_size": (DIGITS_DEFAULTS["view_size"], DataSettings.view_size)}
