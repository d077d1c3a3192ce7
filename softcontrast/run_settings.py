"""The run's settings that belong to no method, and every setting of a run resolved.

Data and views, the model, devices and output are dataclasses here;
:func:`resolve` joins them with :class:`~softcontrast.training.TrainConfig` and a
method's config into :class:`Settings`, and :func:`make_method` builds the run's
method from them (the command line, ``softcontrast evaluate`` and the benchmarks
share it).

With :class:`~softcontrast.training.TrainConfig` and a method's config, these
dataclasses hold every setting of a run; ``softcontrast train`` makes one flag per
field (:mod:`softcontrast.flags`). Their defaults are the general ones;
:data:`DIGITS_DEFAULTS` holds the values that fit the embedded digits data instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from softcontrast.components.augment import ViewRecipe, imagenet_family
from softcontrast.components.backbones import LAST_BATCH_NORMS, Backbone, MLPHead, predictor_for, projector_for
from softcontrast.components.named_backbones import BackboneSpec, backbone_spec
from softcontrast.components.shuffle_bn import ShuffleBatchNorm
from softcontrast.components.view_recipes import NAMED_VIEWS, named_views
from softcontrast.methods.base import ContrastiveMethod
from softcontrast.methods.registry import MethodSpec, Setup, load_plugin, method_spec
from softcontrast.settings import SettingError, check_choice, setting, upgrade_settings
from softcontrast.training import TrainConfig


@dataclass
class DataSettings:
    """The training data and the size and strength of the augmented views."""

    dataset: str = setting("digits", "digits | imagefolder:<path> | npz:<path> | hf:<id> | prepared:<folder>")
    train_subset: int | None = setting(None, "train on this many random training images")
    image_size: int | None = setting(
        None, "side in-memory images are resized to (none: the source's); folder, hf and prepared images "
              "above 96 px stream from the original instead")
    view_size: int | None = setting(None, "side of the augmented views (none: from the image size)")
    crop_min_scale: float | None = setting(
        None, "smallest crop area of the random resized crop (none: the method's recipe)")
    flip_p: float | None = setting(None, "horizontal flip probability (none: the method's recipe)")
    augment: str = setting(
        "auto", "views: cifar (the method's views) | imagenet (plus MoCo v2's ImageNet blur and "
        "ImageNet mean/std) | auto (from the image size) | a paper's ImageNet recipe in place of the method's: "
        "mocov2-imagenet, mocov3-imagenet, sce-imagenet (pairs: query view recipe 1, key view recipe 2), "
        "fnc-imagenet (with RandAugment)", choices=("auto", "cifar", "imagenet", *NAMED_VIEWS))

    def view(self, recipe: ViewRecipe, slot: int = 0) -> ViewRecipe:
        """``recipe`` at :attr:`view_size` in the :attr:`augment` family, with the crop scale and flip
        chosen here (when set).

        With a named :attr:`augment` (:data:`~softcontrast.components.view_recipes.NAMED_VIEWS`) the
        named recipe of view ``slot`` (0: query/anchor, 1: key/column, ...) replaces ``recipe``.
        """
        if self.view_size is None or self.augment == "auto":
            raise ValueError("view_size and augment are chosen by resolve() from the image size; set them first")
        if self.augment in NAMED_VIEWS:
            recipe = named_views(self.augment).for_view(slot)
        recipe = replace(recipe, size=self.view_size)
        if self.augment == "imagenet":
            recipe = imagenet_family(recipe)
        if self.crop_min_scale is not None:
            recipe = replace(recipe, crop_scale=(self.crop_min_scale, recipe.crop_scale[1]))
        if self.flip_p is not None:
            recipe = replace(recipe, flip_p=self.flip_p)
        return recipe


@dataclass
class ModelSettings:
    """The backbone, the projector head and the online branch's predictor head."""

    backbone: str = setting(
        "resnet18", "backbone: resnet18 | resnet34 | resnet50 | torchvision:<model> (e.g. torchvision:resnet50) | "
        "timm:<model> (e.g. timm:vit_small_patch16_224; needs timm); a named model loses its classifier")
    backbone_kwargs: str | None = setting(
        None, "JSON keyword arguments of a torchvision: or timm: model, e.g. '{\"img_size\": 32, \"patch_size\": 8}'")
    width: int = setting(64, "channels of the first ResNet stage (64 = standard; short resnet names only)")
    cifar_stem: bool | None = setting(
        None, "CIFAR stem (3×3 conv, no max-pool); off: the ImageNet stem (7×7 conv + max-pool); "
        "none: from the image size; named models with a ResNet stem take it too, others ignore it")
    projector_hidden: int | None = setting(None, "hidden width of the projector (none: from the image size)")
    projector_out: int = setting(128, "output width of the projector")
    projector_layers: int = setting(2, "linear layers of the projector (1: a linear map)")
    projector_hidden_bn: bool = setting(
        True, "batch norm after the projector's hidden layers (MoCo v2's and SimCLR's ImageNet heads: none)")
    projector_last_bn: str = setting(
        "none", "batch norm after the projector's last layer: none | affine | no-affine (SCE's and MoCo v3's "
        "ImageNet projectors) | scale (a learned scale, no shift: FNC's and SimCLR's)", choices=LAST_BATCH_NORMS)
    predictor_hidden: int | None = setting(
        None, "hidden width of a predictor head on the online branch only (SCE on ImageNet: 4096); "
              "none or 0: no predictor")
    predictor_out: int | None = setting(
        None, "output width of the predictor (none: projector_out, the only width its predictions can be "
              "scored at)")
    predictor_last_bias: bool = setting(
        False, "a bias on the predictor's output layer (SCE's eztorch and MoCo v3's predictors: none; BYOL's: one)")

    def __post_init__(self) -> None:
        check_choice("projector_last_bn", self.projector_last_bn, LAST_BATCH_NORMS)
        if self.predictor_hidden is not None and self.predictor_hidden < 0:
            raise SettingError("predictor_hidden", "predictor_hidden must be >= 1, or 0 or none for no predictor; "
                                                   f"got {self.predictor_hidden}")
        if self.predictor_hidden and self.predictor_out is not None and self.predictor_out != self.projector_out:
            raise SettingError("predictor_out", (
                f"predictor_out {self.predictor_out} differs from projector_out {self.projector_out}: the predictions "
                f"are scored against the projector's outputs, so set predictor_out to {self.projector_out} or none"))
        self.backbone_spec()  # an unknown name or bad kwargs stop the run before the data is loaded

    def predictor(self) -> MLPHead | None:
        """The predictor head these settings ask for, or ``None``."""
        if not self.predictor_hidden:
            return None
        return predictor_for(self.projector_out, self.predictor_hidden, self.predictor_out,
                             last_bias=self.predictor_last_bias)

    def backbone_spec(self) -> BackboneSpec:
        """The spec of the backbone these settings describe (saved as ``backbone.json``).

        Raises:
            SettingError: an unknown backbone name or kwargs that are not a JSON object.
        """
        try:
            return backbone_spec(self.backbone, self.backbone_kwargs, bool(self.cifar_stem), self.width)
        except ValueError as error:
            raise SettingError("backbone_kwargs" if "kwargs" in str(error) else "backbone", str(error)) from None


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
    sync_bn: bool = setting(
        True, "SyncBatchNorm on several GPUs: global batch statistics (under shuffle-BN for the online encoder "
              "only); CUDA only, on the CPU (gloo) each process keeps its own statistics")
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


#: Images at most this many pixels on their shorter side get :data:`SMALL_IMAGE_DEFAULTS` (CIFAR, SVHN,
#: digits as loaded).
SMALL_IMAGE_SIDE = 40
#: Images at least this many pixels on their shorter side get :data:`LARGE_IMAGE_DEFAULTS` (ImageNet, photos).
LARGE_IMAGE_SIDE = 128
#: Defaults for small images: views at the image's own side, the CIFAR stem, the methods' CIFAR views.
SMALL_IMAGE_DEFAULTS: dict[str, Any] = {"view_size": None, "cifar_stem": True, "augment": "cifar",
                                        "projector_hidden": 512}
#: Defaults for large images: the ImageNet protocol (224-px views, the ImageNet stem, ImageNet
#: blur and statistics, MoCo v2's 2048-wide projector).
LARGE_IMAGE_DEFAULTS: dict[str, Any] = {"view_size": 224, "cifar_stem": False, "augment": "imagenet",
                                        "projector_hidden": 2048}
#: Settings that follow the image size; without a value between the two sizes the run is refused.
SIZE_SETTINGS = ("view_size", "cifar_stem", "augment", "projector_hidden")
#: Of those, the ones a run between the two sizes must be given (the projector falls back to 512).
SIZE_SETTINGS_REQUIRED = ("view_size", "cifar_stem", "augment")


def size_defaults(side: int, unset: set[str], source: str) -> tuple[str, dict[str, Any]]:
    """The image-size defaults of the settings in ``unset``: a name for them and their values.

    Raises:
        SettingError: the side lies between :data:`SMALL_IMAGE_SIDE` and :data:`LARGE_IMAGE_SIDE`
            and a setting that has no safe default there is unset.
    """
    if side <= SMALL_IMAGE_SIDE:
        table = {**SMALL_IMAGE_DEFAULTS, "view_size": side}
        chosen = {k: table[k] for k in SIZE_SETTINGS if k in unset}
        return f"small-image defaults ({side} px ≤ {SMALL_IMAGE_SIDE})", chosen
    if side >= LARGE_IMAGE_SIDE:
        return (f"ImageNet defaults ({side} px ≥ {LARGE_IMAGE_SIDE})",
                {k: LARGE_IMAGE_DEFAULTS[k] for k in SIZE_SETTINGS if k in unset})
    missing = [name for name in SIZE_SETTINGS_REQUIRED if name in unset]
    if missing:
        flags = {"view_size": "--view-size", "cifar_stem": "--cifar-stem or --no-cifar-stem",
                 "augment": "--augment (cifar, imagenet or a paper's recipe by name)"}
        raise SettingError(missing[0], (
            f"{source}: images of {side} px lie between the small-image ({SMALL_IMAGE_SIDE} px or less) and the "
            f"ImageNet ({LARGE_IMAGE_SIDE} px or more) defaults, so none is guessed: set "
            + ", ".join(flags[name] for name in missing) + ", or use --config with a recipe"))
    return f"defaults for {side}-px images", {"projector_hidden": 512} if "projector_hidden" in unset else {}


#: The run's settings besides the method's, by section of ``--help``.
RUN_SECTIONS: tuple[tuple[str, type], ...] = (
    ("data", DataSettings), ("model", ModelSettings), ("training", TrainConfig), ("run", RunSettings),
)


@dataclass
class Settings:
    """Every setting of a run, resolved.

    Attributes:
        method: the registry name.
        config: the method's config.
        data: data and views.
        model: backbone and projector.
        train: the training loop's settings.
        run: devices, batch norm of the momentum encoder, output.
        from_digits: the settings that took :data:`DIGITS_DEFAULTS`.
        plugins: files or modules imported to register the method (saved with the run).
        from_size: the settings that took an image-size default (:func:`size_defaults`).
        size_note: which image-size defaults those were, and why.
    """

    method: str
    config: Any
    data: DataSettings
    model: ModelSettings
    train: TrainConfig
    run: RunSettings
    from_digits: dict[str, Any]
    plugins: tuple[str, ...] = ()
    from_size: dict[str, Any] = field(default_factory=dict)
    size_note: str = ""

    def saved(self, num_train_samples: int | None = None) -> dict[str, Any]:
        """The run's saved settings (``run_config.json``): enough to rebuild it (:func:`rebuild_method`)."""
        settings = {"method": self.method, **asdict(self.config), **asdict(self.data), **asdict(self.model),
                    **asdict(self.train), **asdict(self.run), "output_dir": self.train.output_dir,
                    "plugins": list(self.plugins), "backbone_spec": self.model.backbone_spec().to_dict()}
        if num_train_samples is not None:
            settings["num_train_samples"] = num_train_samples
        return settings


def resolve(spec: MethodSpec | None, given: Mapping[str, Any], plugins: tuple[str, ...] = (),
            image_side: int | None = None) -> Settings:
    """Every setting of a run of ``spec``: ``given`` (flags and config file), else the digits table,
    else the image-size defaults, else the defaults.

    ``spec`` may be ``None`` for the settings of a bare backbone (no method config). The
    settings that follow the image size (:data:`SIZE_SETTINGS`) take :func:`size_defaults`
    of ``image_side`` — read from the dataset (:func:`~softcontrast.data.probe.image_side`)
    when not given and a value is missing.

    Raises:
        SettingError: a setting outside its range (it names the field), or images of a size
            between the small and the ImageNet defaults without the settings they need.
        DataSourceError: the dataset's image size cannot be read.
    """
    dataset = given.get("dataset", DataSettings.dataset)
    on_digits = dataset == "digits"
    from_digits: dict[str, Any] = {}
    unset = {name for name in SIZE_SETTINGS
             if given.get(name) is None and not (on_digits and name in DIGITS_DEFAULTS)}
    size_note, from_size = "", {}
    if unset:
        if image_side is None:
            from softcontrast.data.probe import image_side as probe

            image_side = probe(dataset, given.get("image_size"))
        size_note, from_size = size_defaults(image_side, unset, dataset)

    def values(section: type, **fixed: Any) -> dict[str, Any]:
        chosen = {}
        for item in fields(section):
            if item.name in fixed or not item.init:
                continue
            if item.name in given and (given[item.name] is not None or item.name not in SIZE_SETTINGS):
                value = given[item.name]
                chosen[item.name] = tuple(value) if isinstance(value, list) else value
            elif on_digits and item.name in DIGITS_DEFAULTS:
                chosen[item.name] = from_digits[item.name] = DIGITS_DEFAULTS[item.name]
            elif item.name in from_size:
                chosen[item.name] = from_size[item.name]
        return {**chosen, **fixed}

    name = spec.name if spec is not None else "backbone"
    output_dir = given.get("output_dir") or f"runs/{name}"
    config = spec.config(**values(spec.config)) if spec is not None else None
    return Settings(name, config, DataSettings(**values(DataSettings)), ModelSettings(**values(ModelSettings)),
                    TrainConfig(**values(TrainConfig, output_dir=output_dir)),
                    RunSettings(**values(RunSettings, output_dir=output_dir)), from_digits, plugins,
                    from_size, size_note)


def make_method(settings: Settings, backbone: Backbone, processes: int = 1,
                num_samples: int | None = None) -> ContrastiveMethod:
    """Builds the method of ``settings`` over ``backbone`` through the registry, with the run's step options.

    Args:
        settings: the resolved settings.
        backbone: the backbone (:func:`~softcontrast.components.named_backbones.build_backbone` of
            ``settings.model.backbone_spec()``).
        processes: processes of the run (the global batch is ``batch_size × processes``).
        num_samples: training images, if known.
    """
    model = settings.model
    projector = projector_for(backbone, model.projector_hidden, model.projector_out, model.projector_layers,
                              model.projector_last_bn, hidden_batch_norm=model.projector_hidden_bn)
    setup = Setup(projector=projector, view=settings.data.view, global_batch=settings.train.batch_size * processes,
                  num_samples=num_samples)
    method = method_spec(settings.method).build(settings.config, backbone, setup)
    if settings.run.shuffle_bn:
        method.shuffle_bn = ShuffleBatchNorm(settings.run.split_bn_groups)
    if settings.run.channels_last:
        method.channels_last = True
    predictor = model.predictor()
    if predictor is not None:
        method.set_predictor(predictor)
    method.sync_bn = settings.run.sync_bn
    return method


def saved_settings(saved: Mapping[str, Any]) -> Settings:
    """The resolved settings of a run from its saved ones (``run_config.json``), also of runs
    saved before the settings were generated from configs (:func:`upgrade_settings`); a
    saved ``None`` takes the default. The run's plugins are imported first.

    Raises:
        KeyError: the run's method is not registered (its plugin cannot be found).
    """
    saved = upgrade_settings(saved)
    for source in saved.get("plugins") or ():
        load_plugin(source)
    spec = method_spec(saved["method"]) if saved.get("method") else None
    sections = (spec.config,) if spec is not None else ()
    known = {f.name for section in (*sections, *(s for _, s in RUN_SECTIONS)) for f in fields(section) if f.init}
    return resolve(spec, {key: value for key, value in saved.items() if key in known and value is not None},
                   plugins=tuple(saved.get("plugins") or ()))


def rebuild_method(saved: Mapping[str, Any], backbone: Backbone, processes: int = 1) -> ContrastiveMethod:
    """Rebuilds a run's (untrained) method from its saved settings, for ``processes`` processes."""
    return make_method(saved_settings(saved), backbone, processes, saved.get("num_train_samples"))






