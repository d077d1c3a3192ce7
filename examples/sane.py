"""Train SANE, self-labeling refinement + momentum mixup. Run: accelerate launch examples/sane.py [flags]."""

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import projector_for
from softcontrast.methods import SANE


def make_method(backbone, args):
    query_view, key_view = views_of(args, moco_v2_cifar(), moco_v2_cifar())
    return SANE(
        backbone,
        projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers),
        tau=args.tau,
        tau_prime=args.tau_prime,
        mu_start=args.mu_start,
        mu_end=args.mu_end,
        lam=args.lam,
        mixup_kappa=args.mixup_kappa,
        per_sample_theta=args.per_sample_theta,
        mixup_view=args.mixup_view,
        use_p=not args.no_p,
        use_q=not args.no_q,
        mixup=not args.no_mixup,
        queue_size=args.queue_size,
        momentum=args.momentum,
        final_momentum=args.final_momentum,
        query_view=query_view,
        key_view=key_view,
        symmetric=args.symmetric,
        channels_last=args.channels_last,
        shuffle_bn=shuffle_bn_of(args),
    )


if __name__ == "__main__":
    parser = build_parser(__doc__, queue_size=4096)
    parser.add_argument("--tau", type=float, default=0.2, help="τ of the contrastive loss")
    parser.add_argument("--tau-prime", type=float, default=0.8, help="τ′ in (0, 1]: p and q use τ·τ′")
    parser.add_argument("--mu-start", type=float, default=0.0, help="m1, confidence µ at the first step")
    parser.add_argument("--mu-end", type=float, default=1.0, help="m2 >= m1, confidence µ at the last step")
    parser.add_argument("--mixup-kappa", type=float, default=2.0, help="κ of θ ~ Beta(κ, κ)")
    parser.add_argument("--lam", type=float, default=0.5, help="λ in [0, 1], weight of the mixup loss")
    parser.add_argument("--mixup-view", default="weak", choices=["weak", "strong"],
                        help="mix with the partner's key view (weak) or a strongly augmented view (strong)")
    parser.add_argument("--per-sample-theta", action="store_true", help="one θ per sample instead of per batch")
    parser.add_argument("--no-p", action="store_true", help="drop p from the refined label (ablation: q only)")
    parser.add_argument("--no-q", action="store_true", help="drop q from the refined label (ablation: p only)")
    parser.add_argument("--no-mixup", action="store_true", help="contrast x itself against the refined label")
    main("sane", make_method, parser)
