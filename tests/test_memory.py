"""Memory bank, feature queue and class index: update rules against hand-computed values, sampling guarantees, and
save/restore through a checkpoint."""

import torch
import torch.nn.functional as F

from sslkd.core.checkpoint import load_checkpoint, save_checkpoint
from sslkd.models.memory import ClassIndex, FeatureQueue, MemoryBank


def test_memory_bank_momentum_update_at_indices():
    bank = MemoryBank(dim=2, size=4)
    bank.features.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    bank.update(torch.tensor([0, 3]), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), momentum=0.5)
    s = 0.5 ** 0.5
    expected = torch.tensor([[s, s], [0.0, 1.0], [1.0, 0.0], [s, s]])  # normalise(0.5 old + 0.5 new), others kept
    assert torch.allclose(bank.features, expected, atol=1e-6)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(4))


def test_memory_bank_starts_as_unit_vectors_and_gather_is_a_copy():
    bank = MemoryBank(dim=3)
    bank.resize(5, seed=1)
    assert bank.features.shape == (5, 3) and torch.allclose(bank.features.norm(dim=1), torch.ones(5))
    picked = bank.gather(torch.tensor([[1, 2], [2, 4]]))
    assert picked.shape == (2, 2, 3)
    before = picked.clone()
    bank.update(torch.tensor([2]), torch.ones(1, 3), momentum=0.0)
    assert torch.equal(picked, before)


def test_memory_bank_and_queue_survive_a_checkpoint(tmp_path):
    bank, queue = MemoryBank(dim=4, size=6), FeatureQueue(size=5, dim=4)
    bank.update(torch.tensor([1, 2]), torch.randn(2, 4), 0.5)
    queue.enqueue(F.normalize(torch.randn(3, 4), dim=1))
    save_checkpoint(tmp_path / "last.pt", {"method": "mcl", "bank": bank.state_dict(), "queue": queue.state_dict()})
    state = load_checkpoint(tmp_path / "last.pt", "mcl")
    restored_bank, restored_queue = MemoryBank(dim=4), FeatureQueue(size=5, dim=4)  # bank not yet sized
    restored_bank.load_state_dict(state["bank"])
    restored_queue.load_state_dict(state["queue"])
    assert torch.equal(restored_bank.features, bank.features)
    assert torch.equal(restored_queue.keys, queue.keys) and int(restored_queue.pointer) == 3


def test_queue_is_fifo_and_wraps_around():
    queue = FeatureQueue(size=4, dim=1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.keys[:3].flatten().tolist() == [1.0, 2.0, 3.0] and int(queue.pointer) == 3
    queue.enqueue(torch.tensor([[4.0], [5.0]]))  # 4 fills the last slot, 5 replaces the oldest (1)
    assert queue.keys.flatten().tolist() == [5.0, 2.0, 3.0, 4.0] and int(queue.pointer) == 1
    snapshot = queue.snapshot()
    queue.enqueue(torch.tensor([[6.0]]))
    assert snapshot.flatten().tolist() == [5.0, 2.0, 3.0, 4.0]


def test_class_index_draws_same_class_positives_and_other_class_negatives():
    torch.manual_seed(0)
    items = torch.tensor([10, 11, 12, 13, 14, 15, 16])  # data-set indices of the training items
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1])
    index = ClassIndex(items, labels)
    label_of = dict(zip(items.tolist(), labels.tolist()))
    anchors = torch.tensor([10, 11, 13, 15])
    anchor_labels = torch.tensor([label_of[i] for i in anchors.tolist()])
    for _ in range(20):
        positives = index.positives(anchors, anchor_labels)
        assert all(label_of[p] == label_of[a] and p != a for p, a in zip(positives.tolist(), anchors.tolist()))
        negatives = index.negatives(anchor_labels, k=50)
        assert negatives.shape == (4, 50)
        for row, label in zip(negatives.tolist(), anchor_labels.tolist()):
            assert all(label_of[n] != label for n in row)
    # every other-class item is reachable
    drawn = set(index.negatives(torch.tensor([0]), k=500).flatten().tolist())
    assert drawn == {10, 12, 13, 15, 16}


def test_class_index_anchor_alone_in_its_class_is_its_own_positive():
    index = ClassIndex(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert index.positives(torch.tensor([0]), torch.tensor([0])).tolist() == [0]
