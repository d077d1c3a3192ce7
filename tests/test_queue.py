"""MemoryQueue: wrap-around, partial fill, ids, and gathered enqueues over two processes."""

import json
import sys
from pathlib import Path

import pytest
import torch

from softcontrast.components.columns import LogitColumns
from softcontrast.components.queue import EMPTY_ID, MemoryQueue

SCRIPT = Path(__file__).parent / "distributed" / "queue_and_training.py"


def test_partial_fill_marks_only_written_slots_valid():
    queue = MemoryQueue(capacity=8, dim=2)
    queue.enqueue(torch.ones(3, 2), torch.tensor([5, 6, 7]))
    assert queue.valid().tolist() == [True] * 3 + [False] * 5
    assert queue.ids[:3].tolist() == [5, 6, 7]
    assert int(queue.filled) == 3 and int(queue.pointer) == 3


def test_batches_that_do_not_divide_the_capacity_wrap_around():
    queue = MemoryQueue(capacity=5, dim=1)
    for step in range(3):
        ids = torch.arange(3) + 10 * step
        queue.enqueue(ids[:, None].float(), ids)
    # 9 keys written into 5 slots: each slot holds the last key written to it.
    written = [0, 1, 2, 10, 11, 12, 20, 21, 22]
    expected = [EMPTY_ID] * 5
    for position, sample in enumerate(written):
        expected[position % 5] = sample
    assert queue.ids.tolist() == expected
    assert torch.equal(queue.keys[:, 0], torch.tensor(expected).float())
    assert int(queue.filled) == 5 and int(queue.pointer) == 9 % 5


def test_a_batch_larger_than_the_capacity_keeps_its_last_rows():
    queue = MemoryQueue(capacity=4, dim=1)
    queue.enqueue(torch.arange(6.0)[:, None], torch.arange(6))
    assert sorted(queue.ids.tolist()) == [2, 3, 4, 5]


def test_queue_buffers_are_in_the_state_dict():
    queue = MemoryQueue(capacity=4, dim=3)
    queue.enqueue(torch.ones(2, 3), torch.tensor([1, 2]))
    restored = MemoryQueue(capacity=4, dim=3)
    restored.load_state_dict(queue.state_dict())
    assert restored.ids.tolist() == queue.ids.tolist()
    assert int(restored.pointer) == 2 and int(restored.filled) == 2


def test_columns_mask_empty_slots_and_the_rows_own_id():
    queue = MemoryQueue(capacity=6, dim=2)
    queue.enqueue(torch.randn(3, 2), torch.tensor([0, 7, 8]))
    keys = torch.nn.functional.normalize(torch.randn(2, 2), dim=1)
    columns = LogitColumns.build(keys, torch.tensor([0, 1]), queue)
    # column 0 is the positive; queue slots 0..2 hold ids 0, 7, 8; slots 3..5 are empty.
    assert columns.mask.tolist() == [
        [False, True, False, False, True, True, True],
        [False, False, False, False, True, True, True],
    ]


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="capacity"):
        MemoryQueue(capacity=0, dim=4)


@pytest.mark.distributed
def test_two_processes_keep_the_queue_of_one_process_on_the_concatenated_batch(tmp_path, run_two_processes):
    run_two_processes(SCRIPT, tmp_path)

    sys.path.insert(0, str(SCRIPT.parent))
    from queue_and_training import local_batch

    single = MemoryQueue(capacity=10, dim=4)
    for step in range(4):
        parts = [local_batch(step, rank, 3, 4) for rank in range(2)]
        single.enqueue(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    for rank in range(2):
        state = torch.load(tmp_path / f"queue_rank{rank}.pt")
        torch.testing.assert_close(state["keys"], single.keys)
        assert torch.equal(state["ids"], single.ids)
        assert torch.equal(state["filled"], single.filled) and torch.equal(state["pointer"], single.pointer)
        assert state["positive"].tolist() == [rank * 3 + i for i in range(3)]
        assert state["shared"].shape == (6 + 10, 4)
        assert not state["mask"][torch.arange(3), state["positive"]].any()

    runs = [json.loads((tmp_path / f"train_rank{rank}.json").read_text()) for rank in range(2)]
    assert runs[0]["queue_ids"] == runs[1]["queue_ids"]
    valid = [i for i in runs[0]["queue_ids"] if i >= 0]
    assert len(valid) == 32 and len(set(valid)) == 32
    assert all(torch.isfinite(torch.tensor(run["losses"])).all() for run in runs)
