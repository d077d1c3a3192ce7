"""Hypothesis strategies for the label-refinement invariants (tests/test_invariants.py).

What they draw:

* unit embeddings with exact duplicates, near-duplicates and antipodal pairs, among
  the keys, the memory, the queries and the support views;
* a real :class:`~softcontrast.components.memory.Memory` at every fill level
  (``empty``, ``partial``, ``full``, ``wrapped``) reached by enqueueing batches of
  random sizes;
* sample ids with collisions: memory entries that carry a row's id (older keys of
  the same image), ids repeated inside the memory;
* temperatures from 0.01 to 10, the ends included;
* every target builder with legal hyperparameters (:func:`builders`), both column
  layouts (:class:`~softcontrast.components.columns.Columns` ``[block | memory]`` and
  ``[k_i | memory]``), and every mixer (:func:`mixers`) with its sampled parameters;
* multi-view steps (:func:`view_steps`): ``V`` momentum views per image against a
  memory of view entries, with anchors that are column views or no column.

Values come from a seeded ``torch.Generator``; hypothesis draws the structure (sizes,
which rows are copies of which, ids, hyperparameters), so examples shrink well and
stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor

from softcontrast.components.columns import Columns, Rows
from softcontrast.components.memory import Memory
from softcontrast.components.mixers import InputMixup, MixParams, MomentumMixup
from softcontrast.components.targets import (
    FalseNegativeCancellation,
    InfoNCE,
    SelfLabelingRefinery,
    SimilarityTargets,
)

FILL_LEVELS = ("empty", "partial", "full", "wrapped")
RELATIONS = ("fresh", "duplicate", "near", "antipodal")
NEAR_NOISE = (1e-4, 1e-2)
EXTREME_TEMPERATURES = (0.01, 10.0)
MAX_ID = 24

#: Temperatures over their whole tested range, with both ends drawn on purpose.
temperatures = st.one_of(st.sampled_from(EXTREME_TEMPERATURES), st.floats(0.01, 10.0))
unit_interval = st.one_of(st.sampled_from((0.0, 1.0)), st.floats(0.0, 1.0))
cosines = st.one_of(st.sampled_from((-1.0, 0.0, 1.0)), st.floats(-1.0, 1.0))
#: SANE's τ′ in (0, 1] and confidence µ in [0, 10] (the paper's ImageNet m2 is 10).
tau_primes = st.one_of(st.just(1.0), st.floats(0.05, 1.0))
confidences = st.one_of(st.sampled_from((0.0, 1.0, 10.0)), st.floats(0.0, 10.0))


def refinery(tau: float, tau_prime: float, mu: float, use_p: bool = True, use_q: bool = True) -> SelfLabelingRefinery:
    """SANE's label builder at a fixed confidence ``µ`` (``m1 = m2 = µ``)."""
    return SelfLabelingRefinery(tau, tau_prime, mu_start=mu, mu_end=mu, use_p=use_p, use_q=use_q)


@dataclass
class Step:
    """The tensors of one training step, before the target is built.

    Attributes:
        queries: ``B×D`` unit query embeddings (the online side, gets gradients).
        keys: ``B×D`` unit momentum keys.
        ids: ``B`` distinct sample ids of the rows.
        memory: a real memory filled by :meth:`Memory.enqueue`.
        support: ``B×S×D`` unit detection embeddings, the key first (FNC's input).
        in_batch: the column layout: ``[batch keys | memory]`` (``True``) or ``[k_i | memory]``.
        fill: the memory's fill level, one of :data:`FILL_LEVELS`.
    """

    queries: Tensor
    keys: Tensor
    ids: Tensor
    memory: Memory
    support: Tensor
    in_batch: bool
    fill: str

    def columns(self) -> Columns:
        """The step's columns, laid out by :meth:`Columns.build` (one key view per image)."""
        return Columns.build(self.keys[:, None], self.ids, self.memory, batch_negatives=self.in_batch)

    def rows(self, columns: Columns) -> Rows:
        """The query rows of ``columns`` (the queries are no column), with keys and detectors."""
        return columns.rows(self.ids, [None], keys=self.keys, detectors=self.support)

    def layout(self) -> tuple[Columns, Rows]:
        """The step's columns and query rows."""
        columns = self.columns()
        return columns, self.rows(columns)

    def to(self, dtype: torch.dtype) -> "Step":
        """The same step with embeddings (and the memory) in ``dtype``."""
        memory = Memory(self.memory.capacity, self.keys.shape[1]).to(dtype)
        memory.load_state_dict({name: value.to(dtype) if value.is_floating_point() else value
                                for name, value in self.memory.state_dict().items()})
        return Step(self.queries.to(dtype), self.keys.to(dtype), self.ids, memory, self.support.to(dtype),
                    self.in_batch, self.fill)


def _related_units(draw, generator: torch.Generator, count: int, dim: int, pool: list[Tensor]) -> list[Tensor]:
    """``count`` unit vectors, each fresh or a duplicate / near-duplicate / antipode of
    an earlier vector (of ``pool`` or of this draw)."""
    made = []
    for _ in range(count):
        sources = pool + made
        relation = draw(st.sampled_from(RELATIONS)) if sources else "fresh"
        if relation == "fresh":
            vector = F.normalize(torch.randn(dim, generator=generator), dim=0)
        else:
            source = sources[draw(st.integers(0, len(sources) - 1))]
            if relation == "duplicate":
                vector = source.clone()
            elif relation == "antipodal":
                vector = -source
            else:
                noise = draw(st.sampled_from(NEAR_NOISE))
                vector = F.normalize(source + noise * torch.randn(dim, generator=generator), dim=0)
        made.append(vector)
    return made


def _fill_count(draw, fill: str, capacity: int) -> int:
    if fill == "empty":
        return 0
    if fill == "partial":
        return draw(st.integers(1, capacity - 1))
    if fill == "full":
        return capacity
    return draw(st.integers(capacity + 1, 3 * capacity))


@st.composite
def steps(draw, in_batch: bool | None = None, fill: str | None = None, max_batch: int = 6) -> Step:
    """A :class:`Step` with any layout and fill level, or the ones given."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    fill = draw(st.sampled_from(FILL_LEVELS)) if fill is None else fill
    in_batch = draw(st.booleans()) if in_batch is None else in_batch
    batch = draw(st.integers(1, max_batch))
    dim = draw(st.integers(2, 8))
    capacity = draw(st.integers(2 if fill == "partial" else 1, 12))
    views = draw(st.integers(1, 4))

    ids = torch.tensor(draw(st.lists(st.integers(0, MAX_ID), min_size=batch, max_size=batch, unique=True)))
    keys = _related_units(draw, generator, batch, dim, [])
    memory = Memory(capacity, dim)
    remaining = _fill_count(draw, fill, capacity)
    queued: list[Tensor] = []
    while remaining:
        chunk = draw(st.integers(1, remaining))
        entries = _related_units(draw, generator, chunk, dim, keys + queued)
        # Ids collide on purpose: a row's id (an older key of that image) or any id.
        entry_ids = [draw(st.one_of(st.sampled_from(ids.tolist()), st.integers(0, MAX_ID))) for _ in range(chunk)]
        memory.enqueue(torch.stack(entries), torch.tensor(entry_ids))
        queued += entries
        remaining -= chunk
    queries = _related_units(draw, generator, batch, dim, keys + queued)
    others = [_related_units(draw, generator, views - 1, dim, keys + queued) for _ in range(batch)]
    support = torch.stack([torch.stack([key] + extra) for key, extra in zip(keys, others)])
    return Step(torch.stack(queries), torch.stack(keys), ids, memory, support, in_batch, fill)


@dataclass
class ViewStep:
    """A multi-view step: ``V`` momentum views per image against a memory of view entries.

    Attributes:
        momentum: ``B×V×D`` unit momentum embeddings (the block; also the detectors).
        ids: ``B`` distinct sample ids.
        memory: a real memory of view entries whose ids collide with the batch's.
        own_views: per anchor, the column view it is, or ``None`` (no column).
        memory_counts_block: the columns read the memory as published (``[block | memory[:−G·V]]``).
    """

    momentum: Tensor
    ids: Tensor
    memory: Memory
    own_views: list[int | None]
    memory_counts_block: bool

    def layout(self) -> tuple[Columns, Rows]:
        """The step's columns (shared layout) and anchor rows, with the momentum views as detectors."""
        columns = Columns.build(self.momentum, self.ids, self.memory, memory_counts_block=self.memory_counts_block)
        return columns, columns.rows(self.ids, self.own_views, detectors=self.momentum)


@st.composite
def view_steps(draw, min_views: int = 1, max_views: int = 4, max_batch: int = 4) -> ViewStep:
    """A :class:`ViewStep` at any fill level, with either memory order and any anchors."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.integers(1, max_batch))
    views = draw(st.integers(min_views, max_views))
    dim = draw(st.integers(2, 6))
    ids = torch.tensor(draw(st.lists(st.integers(0, MAX_ID), min_size=batch, max_size=batch, unique=True)))
    momentum = torch.stack([torch.stack(_related_units(draw, generator, views, dim, [])) for _ in range(batch)])
    counts_block = draw(st.booleans())
    block = batch * views
    capacity = draw(st.one_of(st.just(0), st.integers(block if counts_block else 1, block + 12)))
    memory = Memory(capacity, dim)
    remaining = _fill_count(draw, draw(st.sampled_from(FILL_LEVELS)), capacity) if capacity > 1 else capacity
    while remaining:
        chunk = draw(st.integers(1, remaining))
        entries = _related_units(draw, generator, chunk, dim, list(momentum.reshape(-1, dim)))
        entry_ids = [draw(st.one_of(st.sampled_from(ids.tolist()), st.integers(0, MAX_ID))) for _ in range(chunk)]
        memory.enqueue(torch.stack(entries), torch.tensor(entry_ids), torch.randint(0, views, (chunk,),
                                                                                   generator=generator))
        remaining -= chunk
    own_views = draw(st.lists(st.sampled_from([None, *range(views)]), min_size=1, max_size=views + 1))
    return ViewStep(momentum, ids, memory, own_views, counts_block)


KINDS = ("infonce", "sce", "sane", "fnc-eliminate", "fnc-attract")


def builders(kind: str | None = None, temperature=temperatures):
    """Any target builder with legal hyperparameters (or one ``kind`` of :data:`KINDS`).

    SCE ``λ ∈ [0, 1]``, ``τm``; SANE ``τ``, ``τ′ ∈ (0, 1]``, ``µ ∈ [0, 10]``, with or
    without ``p`` and ``q``; FNC
    ``top_k >= 1``, ``threshold ∈ [-1, 1]``, aggregation ``max|mean``, strategy
    ``eliminate|attract`` (the number of support views is the step's).
    """
    kinds = {
        "infonce": st.just(InfoNCE()),
        "sce": st.builds(SimilarityTargets, lam=unit_interval, tau_m=temperature),
        "sane": st.builds(refinery, tau=temperature, tau_prime=tau_primes, mu=confidences,
                          use_p=st.booleans(), use_q=st.booleans()),
    }
    for strategy in ("eliminate", "attract"):
        kinds[f"fnc-{strategy}"] = st.builds(
            FalseNegativeCancellation, top_k=st.integers(1, 30), threshold=cosines,
            strategy=st.just(strategy), aggregation=st.sampled_from(("max", "mean")),
        )
    if kind is not None:
        return kinds[kind]
    return st.sampled_from(KINDS).flatmap(kinds.__getitem__)


def degenerate_builders(temperature=temperatures):
    """Each builder at the setting where the DESIGN says it is InfoNCE: SCE ``λ = 1``,
    SANE ``µ = 0``, FNC with ``threshold = 1`` (no cosine exceeds it)."""
    return st.one_of(
        st.builds(SimilarityTargets, lam=st.just(1.0), tau_m=temperature),
        st.builds(refinery, tau=temperature, tau_prime=tau_primes, mu=st.just(0.0),
                  use_p=st.booleans(), use_q=st.booleans()),
        st.builds(FalseNegativeCancellation, top_k=st.integers(1, 30), threshold=st.just(1.0),
                  strategy=st.sampled_from(("eliminate", "attract")), aggregation=st.sampled_from(("max", "mean"))),
    )


def mixers():
    """``None`` (no mixing), :class:`MomentumMixup` or :class:`InputMixup`, per sample
    or per batch, for one process (``across_processes=False``)."""
    mixup = dict(kappa=st.floats(0.05, 10.0), per_sample=st.booleans(),
                 across_processes=st.just(False))
    choices = {"none": st.none(), "momentum": st.builds(MomentumMixup, **mixup), "input": st.builds(InputMixup, **mixup)}
    # Half of the cases unmixed, so the ``[k_i | Q]`` layout is drawn as often.
    return st.sampled_from(("none", "momentum", "none", "input")).flatmap(choices.__getitem__)


@st.composite
def mix_params(draw, mixer, batch: int) -> MixParams:
    """The mixer's own draw (``mixer.sample``, seeded), or the same with ``θ`` at an end (0 or 1)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(draw(st.integers(0, 2**32 - 1)))
        params = mixer.sample(batch, "cpu")
    end = draw(st.sampled_from((None, 0.0, 1.0)))
    if end is None:
        return params
    return MixParams(torch.full_like(params.theta, end), params.partner, params.across_processes)


@dataclass
class Case:
    """A step, a builder, and an optional mixer with its parameters."""

    step: Step
    builder: object
    mixer: object | None
    params: MixParams | None

    def targets(self, step: Step | None = None, params: MixParams | None = None):
        """The builder's targets of ``step`` (default: the case's), mixed if there is a mixer."""
        step = step or self.step
        targets = self.builder(*step.layout())
        if self.mixer is None:
            return targets
        return self.mixer.mix_targets(targets, params or self.params)


@st.composite
def cases(draw, builder=None, fill: str | None = None, in_batch: bool | None = None) -> Case:
    """Any builder (or those of ``builder``) on any step, composed with any mixer.

    Mixing needs every row's target on the same columns, so a case with a mixer
    uses the ``[batch keys | Q]`` layout (as SANE's mixup term does).
    """
    mixer = draw(mixers())
    step = draw(steps(in_batch=True if mixer is not None else in_batch, fill=fill))
    params = None if mixer is None else draw(mix_params(mixer, step.keys.shape[0]))
    return Case(step, draw(builders() if builder is None else builder), mixer, params)
