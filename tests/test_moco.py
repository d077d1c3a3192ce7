"""MoCo v2: the loss equals an independently written InfoNCE on the same tensors."""

import pytest
import torch
import torch.nn.functional as F

from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.components.columns import Columns
from softcontrast.components.losses import soft_cross_entropy
from softcontrast.components.memory import Memory
from softcontrast.components.targets import InfoNCE
from softcontrast.methods import Setup, method_spec


def moco(queue_size=16, **overrides):
    """MoCo v2 on a width-8 ResNet-18, both views the MoCo v2 recipe at 16 px."""
    torch.manual_seed(0)
    setup = Setup(view=lambda recipe: for_image_size(recipe, 16))
    return method_spec("moco")(resnet("resnet18", width=8), setup=setup, queue_size=queue_size, **overrides)


def reference_infonce(q, k, queue, queue_ids, ids, tau):
    """He et al. (2020), Algorithm 1, with empty slots and same-image entries left out."""
    losses = []
    for i in range(q.shape[0]):
        negatives = [queue[j] for j in range(queue.shape[0]) if queue_ids[j] >= 0 and queue_ids[j] != ids[i]]
        logits = [torch.dot(q[i], k[i])] + [torch.dot(q[i], n) for n in negatives]
        logits = torch.stack(logits) / tau
        losses.append(-torch.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def test_moco_loss_equals_reference_infonce():
    generator = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(6, 8, generator=generator, dtype=torch.float64), dim=1)
    memory = Memory(capacity=10, dim=8).double()
    memory.enqueue(F.normalize(torch.randn(7, 8, generator=generator, dtype=torch.float64), dim=1),
                   torch.tensor([0, 3, 50, 51, 52, 5, 53]))
    ids = torch.arange(6)
    columns = Columns.build(k[:, None], ids, memory, batch_negatives=False)
    targets = InfoNCE()(columns, columns.rows(ids, [None], keys=k))
    loss = soft_cross_entropy(columns.scores(q) / 0.2, targets.target, targets.mask)
    expected = reference_infonce(q, k, memory.embeddings, memory.ids, ids, 0.2)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)


def test_moco_step_trains_and_enqueues():
    method = moco(queue_size=16)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    output = method(images, torch.arange(8))
    output.loss.backward()
    assert all(p.grad is not None for p in method.online.parameters())
    assert all(p.grad is None for p in method.target_encoder.parameters())
    method.after_optimizer_step(0, 10)
    assert sorted(method.memory.ids[method.memory.valid()].tolist()) == list(range(8))


def test_symmetric_enqueues_both_keys():
    method = moco(queue_size=32, symmetric=True)
    method(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8), torch.arange(4)).loss.backward()
    method.after_optimizer_step(0, 10)
    assert int(method.memory.filled) == 8


def test_non_positive_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        moco(temperature=0.0)
