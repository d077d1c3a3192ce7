"""Train MoCo v2 (the baseline). Run: accelerate launch examples/moco.py [flags]."""

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import projector_for
from softcontrast.methods import MoCoV2


def make_method(backbone, args):
    (view,) = views_of(args, moco_v2_cifar())
    return MoCoV2(
        backbone,
        projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers),
        view=view,
        queue_size=args.queue_size,
        temperature=args.temperature,
        momentum=args.momentum,
        final_momentum=args.final_momentum,
        symmetric=args.symmetric,
        channels_last=args.channels_last,
        shuffle_bn=shuffle_bn_of(args),
    )


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--temperature", type=float, default=0.2, help="τ of InfoNCE")
    main("moco", make_method, parser)
