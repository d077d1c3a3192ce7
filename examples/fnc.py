"""Train FNC, False Negative Cancellation. Run: accelerate launch examples/fnc.py [flags].

``--variant paper`` (default) is the published multi-view objective; ``--variant moco``
is this library's adaptation to MoCo v2 (one anchor per image, support views only for
detection, a queue of keys).
"""

from accelerate import PartialState

from softcontrast.cli import build_parser, main, shuffle_bn_of, views_of
from softcontrast.components.augment import moco_v2_cifar
from softcontrast.components.backbones import projector_for
from softcontrast.components.neighbors import BACKENDS
from softcontrast.components.targets.false_negatives import AGGREGATIONS, STRATEGIES
from softcontrast.methods import FNC, FNCOnMoCo
from softcontrast.methods.fnc import COLUMN_LAYOUTS

#: Defaults that differ between the variants: (paper, moco).
VARIANT_DEFAULTS = {"tau": (0.1, 0.2), "support_views": (8, 4), "momentum": (0.999, 0.99)}


def variant_default(args, name):
    value = getattr(args, name)
    return VARIANT_DEFAULTS[name][args.variant == "moco"] if value is None else value


def make_method(backbone, args):
    (view,) = views_of(args, moco_v2_cifar())
    common = dict(
        support_views=variant_default(args, "support_views"),
        top_k=args.top_k,
        threshold=args.threshold,
        strategy=args.strategy,
        aggregation=args.aggregation,
        search_backend=args.search_backend,
        view=view,
        temperature=variant_default(args, "tau"),
        momentum=variant_default(args, "momentum"),
        final_momentum=args.final_momentum,
        channels_last=args.channels_last,
        shuffle_bn=shuffle_bn_of(args),
    )
    projector = projector_for(backbone, args.projector_hidden, args.projector_out, args.projector_layers)
    if args.variant == "moco":
        return FNCOnMoCo(backbone, projector, queue_size=args.queue_size, symmetric=args.symmetric, **common)
    memory_size = args.memory_size
    if memory_size is None:  # the paper's memory: 16 × the global batch view entries in total, block included
        memory_size = 16 * args.batch_size * PartialState().num_processes
    return FNC(backbone, projector, memory_size=memory_size, loss_scale=args.loss_scale,
               column_layout=args.column_layout, **common)


if __name__ == "__main__":
    parser = build_parser(__doc__, momentum=None)
    parser.add_argument("--variant", default="paper", choices=["paper", "moco"],
                        help="paper: the published multi-view objective; moco: this library's MoCo adaptation")
    parser.add_argument("--tau", type=float, default=None, help="temperature of the loss (paper 0.1, moco 0.2)")
    parser.add_argument("--support-views", type=int, default=None,
                        help="paper: S views per image beyond the first two, V = 2 + S (default 8); "
                             "moco: support embeddings per image, the key included (default 4)")
    parser.add_argument("--memory-size", type=int, default=None,
                        help="paper: view entries in the memory, the current block included "
                             "(default 16 × the global batch, as published; 0 = none)")
    parser.add_argument("--column-layout", default="published", choices=COLUMN_LAYOUTS,
                        help="paper: published = the memory counts the block, and without memory the online "
                             "views are the columns; library = our earlier layout (the block in front of the "
                             "memory, momentum columns without memory)")
    parser.add_argument("--top-k", type=int, default=10, help="at most this many false negatives per image")
    parser.add_argument("--threshold", type=float, default=0.7, help="cosine a false negative must exceed")
    parser.add_argument("--strategy", default="attract", choices=STRATEGIES)
    parser.add_argument("--aggregation", default="max", choices=AGGREGATIONS, help="over the views")
    parser.add_argument("--loss-scale", type=float, default=2.0,
                        help="paper: scale of the mean loss over anchors (2 as published, 1 = plain mean)")
    parser.add_argument("--search-backend", default="torch", choices=BACKENDS, help="neighbour search")
    parser.set_defaults(momentum=None)
    main("fnc", make_method, parser)
