"""The multi-view mechanism: views, view columns and rows, SCE multi-crop, 2 processes."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from softcontrast.components.augment import for_image_size, moco_v2_cifar, sce_strong, sce_weak, to_float
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.components.multiview import MultiViewAugment, SmallCrops, embed_views
from softcontrast.methods import SCEConfig, Setup, method_spec

SCRIPT = Path(__file__).parent / "distributed" / "multiview_two_process.py"


def test_views_have_their_own_sizes_and_same_size_views_share_one_encoder_call():
    recipes = [for_image_size(moco_v2_cifar(), 16)] * 2 + [for_image_size(moco_v2_cifar(), 8)] * 3
    views = MultiViewAugment(recipes)(torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8))
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8, 8]
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return x.mean(dim=(2, 3))

    embedded = embed_views(encode, views)
    assert calls == [10, 15] and embedded.shape == (5, 5, 3)
    for index, view in enumerate(views):
        torch.testing.assert_close(embedded[index], view.mean(dim=(2, 3)))


def test_layout_masks_the_own_column_empty_slots_and_older_entries_of_the_same_image():
    momentum = F.normalize(torch.randn(2, 3, 4), dim=-1)
    ids = torch.tensor([5, 7])
    memory = Memory(capacity=4, dim=4)
    memory.enqueue(torch.randn(3, 4), torch.tensor([5, 9, 7]), torch.tensor([0, 1, 2]))
    columns = Columns.build(momentum, ids, memory, memory_counts_block=False)  # every slot behind the block
    assert columns.ids.tolist() == [5, 5, 5, 7, 7, 7, 5, 9, 7, -1]
    assert columns.views.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, -1]
    rows = columns.rows(ids, [0, 1, 2])
    assert rows.own.tolist() == [0, 1, 2, 3, 4, 5]
    assert rows.positive[0].nonzero().flatten().tolist() == [1, 2]
    assert rows.positive[4].nonzero().flatten().tolist() == [3, 5]
    assert rows.mask[0].nonzero().flatten().tolist() == [0, 6, 9]
    assert rows.mask[4].nonzero().flatten().tolist() == [4, 8, 9]
    crops = columns.rows(ids, [None])  # anchors that are no column: every view is positive
    assert crops.positive[0].nonzero().flatten().tolist() == [0, 1, 2]


def sce_view(recipe):
    """SCE's strong query and weak key views at 16 px."""
    return sce_strong(16) if recipe == sce_strong() else sce_weak(16)


def small_sce(small_crops=None):
    torch.manual_seed(0)
    method = method_spec("sce")(resnet("resnet18", width=4), setup=Setup(view=sce_view), queue_size=32)
    assert method.views.recipes == [sce_strong(16), sce_weak(16)]
    method.small_crops = small_crops
    return method


def warm(method, images):
    """One step and enqueue, so the next step's target has similarity mass."""
    method(images, torch.arange(8) + 100).loss.backward()
    method.after_optimizer_step(0, 2)


def copy_of(generator: torch.Generator) -> torch.Generator:
    """A generator that draws what ``generator`` draws next."""
    copy = torch.Generator()
    copy.set_state(generator.get_state())
    return copy


def reference_contrast(method, images, ids, local):
    """The two-view SCE step recomputed from its components (the step before multi-crop existed),
    with views drawn from ``local``, a copy of the method's local stream before its step."""
    x = to_float(images)
    query_augment, key_augment = method.views.augments
    query_views, key_views = query_augment(x, local), key_augment(x, local)
    keys = method.target_encoder(key_views)
    columns = Columns.build(keys[:, None], ids, method.memory, batch_negatives=False)
    targets = method.targets(columns, columns.rows(ids, [None], keys=keys))
    query = method.online(query_views)
    return columns, targets, soft_cross_entropy(columns.scores(query) / method.temperature, targets.target,
                                                targets.mask)


def test_sce_without_small_crops_is_the_two_view_step():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    method = small_sce()
    warm(method, images)
    local = copy_of(method.streams.local)
    loss = method(images, torch.arange(8)).loss
    _, _, expected = reference_contrast(method, images, torch.arange(8), local)
    assert loss.item() > 0
    torch.testing.assert_close(loss, expected)


def test_each_small_crop_is_a_query_with_its_images_target_against_the_same_columns():
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    crop_recipe = for_image_size(sce_strong(), 8)
    method = small_sce(SmallCrops(3, crop_recipe))
    warm(method, images)
    local = copy_of(method.streams.local)
    loss = method(images, torch.arange(8)).loss
    columns, targets, query_loss = reference_contrast(method, images, torch.arange(8), local)
    crops = [method.small_crops.augment.augments[0](to_float(images), local) for _ in range(3)]
    assert crops[0].shape[-1] == 8
    crop_embeddings = method.online(torch.cat(crops)).reshape(3, 8, -1)
    crop_losses = [soft_cross_entropy(columns.scores(z) / method.temperature, targets.target, targets.mask)
                   for z in crop_embeddings]
    torch.testing.assert_close(loss, (query_loss + sum(crop_losses)) / 4)


def test_small_crop_settings_build_crops_of_the_query_recipe_and_refuse_bad_values():
    crops = SCEConfig(small_crops=6).crops(sce_strong(224))
    assert crops.count == 6 and crops.augment.recipes[0].size == 96
    assert crops.augment.recipes[0].crop_scale == (0.05, 0.14)
    assert SCEConfig(small_crops=0).crops(sce_strong()) is None
    with pytest.raises(ValueError, match="small_crops") as error:
        SCEConfig(small_crops=-1).crops(sce_strong())
    assert error.value.name == "small_crops"
    with pytest.raises(ValueError, match="small_crop_scale") as error:
        SCEConfig(small_crop_scale=(0.5, 0.2)).crops(sce_strong())
    assert error.value.name == "small_crop_scale"
    method = method_spec("sce")(resnet("resnet18", width=4), setup=Setup(view=sce_view), queue_size=32,
                                small_crops=2, small_crop_size=8)
    assert method.small_crops.count == 2 and method.small_crops.augment.recipes[0].size == 8


@pytest.mark.distributed
def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from multiview_two_process import IMAGES, fnc_step

    ranks = [torch.load(tmp_path / f"multiview_rank{rank}.pt") for rank in range(2)]
    for strategy in ("attract", "eliminate"):
        single = fnc_step(slice(None), strategy)
        parts = [ranks[rank][strategy] for rank in range(2)]
        # the processes' losses average (as their gradients do) to the one-process loss
        torch.testing.assert_close((parts[0]["loss"] + parts[1]["loss"]) / 2, single["loss"])
        torch.testing.assert_close(torch.cat([p["grad"] for p in parts]) / 2, single["grad"])
        assert torch.equal(torch.cat([p["found"] for p in parts]), single["found"])
        assert single["found"].any() and not single["found"].all()
        for part in parts:
            assert torch.equal(part["column_ids"], single["column_ids"])
            for key in ("memory.embeddings", "memory.ids", "memory.views", "memory.pointer", "memory.filled"):
                torch.testing.assert_close(part[key], single[key])
    assert single["memory.filled"] == 20 and IMAGES == 6
    # published without memory: the online views are the columns, their gradient crosses the processes
    single = fnc_step(slice(None), "attract", online=True)
    parts = [ranks[rank]["online"] for rank in range(2)]
    torch.testing.assert_close((parts[0]["loss"] + parts[1]["loss"]) / 2, single["loss"])
    torch.testing.assert_close(torch.cat([p["grad"] for p in parts]) / 2, single["grad"])
    assert torch.equal(torch.cat([p["found"] for p in parts]), single["found"]) and single["found"].any()

    runs = [json.loads((tmp_path / f"fnc_rank{rank}.json").read_text()) for rank in range(2)]
    assert runs[0]["memory_ids"] == runs[1]["memory_ids"] and runs[0]["memory_views"] == runs[1]["memory_views"]
    assert sorted(set(runs[0]["memory_views"])) == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(run["losses"])).all() for run in runs)
