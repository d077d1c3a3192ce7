"""Memory: wrap-around, partial fill, ids and views, the published read order, gathered blocks over two processes."""

import json
import sys
from pathlib import Path

import pytest
import torch

from softcontrast.components.columns import Columns
from softcontrast.components.memory import EMPTY_ID, NO_COLUMN, Memory

SCRIPT = Path(__file__).parent / "distributed" / "queue_and_training.py"


def test_partial_fill_marks_only_written_slots_valid():
    memory = Memory(capacity=8, dim=2)
    memory.enqueue(torch.ones(3, 2), torch.tensor([5, 6, 7]))
    assert memory.valid().tolist() == [True] * 3 + [False] * 5
    assert memory.ids[:3].tolist() == [5, 6, 7]
    assert memory.views.tolist() == [0] * 3 + [NO_COLUMN] * 5  # one view per image by default
    assert int(memory.filled) == 3 and int(memory.pointer) == 3


def test_batches_that_do_not_divide_the_capacity_wrap_around():
    memory = Memory(capacity=5, dim=1)
    for step in range(3):
        ids = torch.arange(3) + 10 * step
        memory.enqueue(ids[:, None].float(), ids)
    # 9 keys written into 5 slots: each slot holds the last key written to it.
    written = [0, 1, 2, 10, 11, 12, 20, 21, 22]
    expected = [EMPTY_ID] * 5
    for position, sample in enumerate(written):
        expected[position % 5] = sample
    assert memory.ids.tolist() == expected
    assert torch.equal(memory.embeddings[:, 0], torch.tensor(expected).float())
    assert int(memory.filled) == 5 and int(memory.pointer) == 9 % 5


def test_view_entries_wrap_blocks_that_do_not_divide_the_memory_and_are_in_the_state_dict():
    memory = Memory(capacity=10, dim=2)
    for step in range(3):  # blocks of 4 view entries: 4, 8, then 2 at the end and 2 at the start
        ids = torch.arange(4) + 10 * step
        memory.enqueue(torch.full((4, 2), float(step)), ids, torch.arange(4) % 2)
    assert memory.ids.tolist() == [22, 23, 2, 3, 10, 11, 12, 13, 20, 21]
    assert memory.views.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    assert memory.pointer == 2 and memory.filled == 10
    assert {"embeddings", "ids", "views", "pointer", "filled"} <= set(memory.state_dict())


def test_a_batch_larger_than_the_capacity_keeps_its_last_rows():
    memory = Memory(capacity=4, dim=1)
    memory.enqueue(torch.arange(6.0)[:, None], torch.arange(6), torch.arange(6) % 3)
    assert sorted(memory.ids.tolist()) == [2, 3, 4, 5]
    assert sorted(zip(memory.ids.tolist(), memory.views.tolist())) == [(2, 2), (3, 0), (4, 1), (5, 2)]
    assert int(memory.filled) == 4


def test_published_order_reads_the_entries_behind_the_new_block_newest_block_first():
    memory = Memory(capacity=10, dim=1)
    for step in range(3):  # blocks of 3: slots 0-2, 3-5, 6-8
        ids = torch.arange(3) + 10 * step
        memory.enqueue(ids[:, None].float(), ids)
    embeddings, ids, views = memory.entries()
    assert ids.tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22, EMPTY_ID]  # every slot, in slot order
    _, ids, _ = memory.entries(3)  # an official memory of 10 rows whose head is a new block of 3
    assert ids.tolist() == [20, 21, 22, 10, 11, 12, 0]
    with pytest.raises(ValueError, match="smaller than one block"):
        memory.entries(11)


def test_memory_buffers_are_in_the_state_dict():
    memory = Memory(capacity=4, dim=3)
    memory.enqueue(torch.ones(2, 3), torch.tensor([1, 2]), torch.tensor([0, 1]))
    restored = Memory(capacity=4, dim=3)
    restored.load_state_dict(memory.state_dict())
    assert restored.ids.tolist() == memory.ids.tolist() and restored.views.tolist() == memory.views.tolist()
    assert int(restored.pointer) == 2 and int(restored.filled) == 2


def test_own_key_columns_mask_empty_slots_and_the_rows_own_id():
    memory = Memory(capacity=6, dim=2)
    memory.enqueue(torch.randn(3, 2), torch.tensor([0, 7, 8]))
    keys = torch.nn.functional.normalize(torch.randn(2, 2), dim=1)
    columns = Columns.build(keys[:, None], torch.tensor([0, 1]), memory, batch_negatives=False)
    rows = columns.rows(torch.tensor([0, 1]), [None], keys=keys)
    # column 0 is the positive; memory slots 0..2 hold ids 0, 7, 8; slots 3..5 are empty.
    assert rows.mask.tolist() == [
        [False, True, False, False, True, True, True],
        [False, False, False, False, True, True, True],
    ]
    assert rows.positive[:, 0].all() and rows.positive.sum() == 2


def test_bad_sizes_are_rejected_and_capacity_zero_is_no_memory():
    with pytest.raises(ValueError, match="capacity"):
        Memory(capacity=-1, dim=4)
    with pytest.raises(ValueError, match="dim"):
        Memory(capacity=4, dim=0)
    empty = Memory(capacity=0, dim=2)
    empty.enqueue(torch.zeros(4, 2), torch.arange(4), torch.arange(4))
    assert empty.filled == 0 and empty.ids.numel() == 0


@pytest.mark.distributed
def test_two_processes_keep_the_memory_of_one_process_on_the_concatenated_batch(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from queue_and_training import local_batch

    single = Memory(capacity=10, dim=4)
    for step in range(4):
        parts = [local_batch(step, rank, 3, 4) for rank in range(2)]
        single.enqueue(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for rank in range(2):
        state = torch.load(tmp_path / f"queue_rank{rank}.pt")
        torch.testing.assert_close(state["embeddings"], single.embeddings)
        assert torch.equal(state["ids"], single.ids) and torch.equal(state["views"], single.views)
        assert torch.equal(state["filled"], single.filled) and torch.equal(state["pointer"], single.pointer)
        assert state["positive"].tolist() == [rank * 3 + i for i in range(3)]
        assert state["shared"].shape == (6 + 10, 4)
        assert not state["mask"][torch.arange(3), state["positive"]].any()

    runs = [json.loads((tmp_path / f"train_rank{rank}.json").read_text()) for rank in range(2)]
    assert runs[0]["queue_ids"] == runs[1]["queue_ids"]
    valid = [i for i in runs[0]["queue_ids"] if i >= 0]
    assert len(valid) == 32 and len(set(valid)) == 32
    assert all(torch.isfinite(torch.tensor(run["losses"])).all() for run in runs)
