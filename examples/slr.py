"""Train SANE, Self-Labeling Refinement + Momentum Mixup. Run: accelerate launch examples/slr.py [flags]."""

from softcontrast.cli import build_parser, main, views_of
from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import projector_for
from softcontrast.methods import SANE


def make_method(backbone, args):
    query_view, key_view = views_of(args, moco_v2_cifar(), moco_v2_cifar())
    return SANE(
        backbone,
        projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers),
        alpha=args.alpha,
        tau=args.tau,
        tau_s=args.tau_s,
        kappa=args.kappa,
        mixup_beta=args.mixup_beta,
        mixup_weight=args.mixup_weight,
        slr=not args.no_slr,
        mixup=not args.no_mixup,
        queue_size=args.queue_size,
        momentum=args.momentum,
        final_momentum=args.final_momentum,
        query_view=query_view,
        key_view=key_view,
        in_batch_keys=args.in_batch_keys,
        symmetric=args.symmetric,
        channels_last=args.channels_last,
    )


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--alpha", type=float, default=0.5, help="α, weight of the refined label")
    parser.add_argument("--tau", type=float, default=0.2, help="τ of the online distribution")
    parser.add_argument("--tau-s", type=float, default=0.1, help="τs of the key's similarity distribution")
    parser.add_argument("--kappa", type=int, default=10, help="κ, largest entries of the refined label kept")
    parser.add_argument("--mixup-beta", type=float, default=1.0, help="β of θ ~ Beta(β, β)")
    parser.add_argument("--mixup-weight", type=float, default=1.0, help="w, weight of the momentum-mixup loss")
    parser.add_argument("--no-slr", action="store_true", help="one-hot labels instead of refined ones")
    parser.add_argument("--no-mixup", action="store_true", help="drop the momentum-mixup loss")
    parser.add_argument("--in-batch-keys", action="store_true", help="columns [all batch keys | queue] for L_SLR")
    main("slr", make_method, parser)
