"""Train SCE, Similarity Contrastive Estimation. Run: accelerate launch examples/sce.py [flags]."""

from dataclasses import replace

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import sce_strong, sce_weak
from softcontrast.components.backbones import projector_for
from softcontrast.components.multiview import SmallCrops
from softcontrast.methods import SCE


def small_crops_of(args, query_view):
    """``--small-crops N`` crops of the query recipe at ``--small-crop-size`` and ``--small-crop-scale``."""
    if args.small_crops < 0:
        raise ValueError(f"--small-crops must be >= 0, got {args.small_crops}")
    if args.small_crops == 0:
        return None
    size = args.small_crop_size or max(1, round(args.view_size * 96 / 224))
    low, high = args.small_crop_scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"--small-crop-scale must satisfy 0 < a <= b <= 1, got {low} {high}")
    return SmallCrops(args.small_crops, replace(query_view, size=size, crop_scale=(low, high)))


def make_method(backbone, args):
    query_view, key_view = views_of(args, sce_strong(), sce_weak())
    return SCE(
        backbone,
        projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers),
        lam=args.lam,
        tau=args.tau,
        tau_m=args.tau_m,
        queue_size=args.queue_size,
        momentum=args.momentum,
        final_momentum=args.final_momentum,
        query_view=query_view,
        key_view=key_view,
        in_batch_keys=args.in_batch_keys,
        symmetric=args.symmetric,
        channels_last=args.channels_last,
        shuffle_bn=shuffle_bn_of(args),
        small_crops=small_crops_of(args, query_view),
    )


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--lam", type=float, default=0.5, help="λ, weight of the one-hot target")
    parser.add_argument("--tau", type=float, default=0.1, help="τ of the online distribution")
    parser.add_argument("--tau-m", type=float, default=0.05, help="τm of the similarity target")
    parser.add_argument("--in-batch-keys", action="store_true", help="columns [all batch keys | queue]")
    parser.add_argument("--small-crops", type=int, default=0,
                        help="multi-crop: small crops per image, each one more query with the image's target")
    parser.add_argument("--small-crop-size", type=int, default=None,
                        help="side of the small crops (default: view size × 96/224, as in multi-crop)")
    parser.add_argument("--small-crop-scale", type=float, nargs=2, default=(0.05, 0.14), metavar=("A", "B"),
                        help="crop area range of the small crops")
    main("sce", make_method, parser)
