"""Train FNC, False Negative Cancellation. Run: accelerate launch examples/fnc.py [flags]."""

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import projector_for
from softcontrast.components.neighbors import BACKENDS
from softcontrast.components.targets.false_negatives import AGGREGATIONS, STRATEGIES
from softcontrast.methods import FNC


def make_method(backbone, args):
    (view,) = views_of(args, moco_v2_cifar())
    return FNC(
        backbone,
        projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers),
        support_views=args.support_views,
        top_k=args.top_k,
        threshold=args.threshold,
        strategy=args.strategy,
        aggregation=args.aggregation,
        search_backend=args.search_backend,
        view=view,
        queue_size=args.queue_size,
        temperature=args.tau,
        momentum=args.momentum,
        final_momentum=args.final_momentum,
        symmetric=args.symmetric,
        channels_last=args.channels_last,
        shuffle_bn=shuffle_bn_of(args),
    )


if __name__ == "__main__":
    parser = build_parser(__doc__)
    parser.add_argument("--tau", type=float, default=0.2, help="τ of the loss (MoCo v2)")
    parser.add_argument("--support-views", type=int, default=4, help="S momentum views per image, key included")
    parser.add_argument("--top-k", type=int, default=10, help="at most this many false negatives per row")
    parser.add_argument("--threshold", type=float, default=0.7, help="cosine a false negative must exceed")
    parser.add_argument("--strategy", default="attract", choices=STRATEGIES)
    parser.add_argument("--aggregation", default="max", choices=AGGREGATIONS, help="over the support views")
    parser.add_argument("--search-backend", default="torch", choices=BACKENDS, help="neighbour search of the queue")
    main("fnc", make_method, parser)
