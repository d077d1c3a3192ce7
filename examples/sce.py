"""Train SCE, Similarity Contrastive Estimation. Run: accelerate launch examples/sce.py [flags]."""

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import sce_strong, sce_weak
from softcontrast.components.backbones import projector_for
from softcontrast.methods import SCE


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
    )


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--lam", type=float, default=0.5, help="λ, weight of the one-hot target")
    parser.add_argument("--tau", type=float, default=0.1, help="τ of the online distribution")
    parser.add_argument("--tau-m", type=float, default=0.05, help="τm of the similarity target")
    parser.add_argument("--in-batch-keys", action="store_true", help="columns [all batch keys | queue]")
    main("sce", make_method, parser)
