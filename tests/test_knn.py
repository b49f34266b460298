"""k-NN evaluation: faiss search agrees with the brute-force torch reference; votes match hand-computed answers."""

import math
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sslkd.eval import dogo_knn_mean, extract_features, knn_accuracy, knn_predict, knn_predict_torch


def random_problem(n_train, n_test, dim=16, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    train = F.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    test = F.normalize(torch.randn(n_test, dim, generator=g), dim=1)
    labels = torch.randint(num_classes, (n_train,), generator=g)
    return train, labels, test


def unit(angle):
    return [math.cos(angle), math.sin(angle)]


@pytest.mark.parametrize("vote", ["weighted", "majority"])
@pytest.mark.parametrize("n_test", [37, 1])
def test_faiss_matches_torch_reference(vote, n_test):
    train, labels, test = random_problem(500, n_test)
    ks = (1, 2, 5, 20, 100)
    got = knn_predict(train, labels, test, ks, 5, vote=vote, chunk_size=16)
    ref = knn_predict_torch(train, labels, test, ks, 5, vote=vote)
    assert set(got) == set(ks)
    for k in ks:
        assert got[k].dtype == torch.long and got[k].shape == (n_test,)
        assert torch.equal(got[k], ref[k]), k


def test_k_larger_than_train_set_is_capped():
    train, labels, test = random_problem(7, 12, num_classes=3)
    for vote in ("weighted", "majority"):
        got = knn_predict(train, labels, test, (3, 7, 50), 3, vote=vote)
        ref = knn_predict_torch(train, labels, test, (3, 7, 50), 3, vote=vote)
        assert torch.equal(got[50], got[7]) and torch.equal(got[50], ref[50])
        assert torch.equal(got[3], ref[3])


def test_weighted_and_majority_differ_hand_computed():
    # Query at (1, 0); neighbours with cosine 0.99 (class 0), 0.5 and 0.4 (class 1), -1 (class 2).
    train = torch.tensor([[0.99, math.sqrt(1 - 0.99**2)], [0.5, math.sqrt(0.75)], [0.4, -math.sqrt(0.84)],
                          [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.0]])
    weighted = knn_predict(train, labels, test, (1, 3, 4), 3, temperature=0.07)
    majority = knn_predict(train, labels, test, (1, 3, 4), 3, vote="majority")
    # T=0.07: class 0 gets exp(0.99/0.07) = 1.4e6, class 1 gets exp(0.5/0.07) + exp(0.4/0.07) = 1.6e3.
    assert [weighted[k].item() for k in (1, 3, 4)] == [0, 0, 0]
    # Majority: k=1 -> class 0; k=3 and k=4 -> class 1 holds two of the votes.
    assert [majority[k].item() for k in (1, 3, 4)] == [0, 1, 1]
    # T=1: class 0 gets e^0.99 = 2.69 < e^0.5 + e^0.4 = 3.14 for class 1, so the temperature flips the answer.
    assert knn_predict(train, labels, test, (3,), 3, temperature=1.0)[3].item() == 1


def test_majority_tie_goes_to_nearest_neighbours_class():
    # Neighbours in order of similarity have classes 2, 1, 1, 2; class 1 has the lower index.
    train = torch.tensor([unit(0.1), unit(0.2), unit(0.3), unit(0.4)])
    labels = torch.tensor([2, 1, 1, 2])
    test = torch.tensor([unit(0.0)])
    for predict in (knn_predict, knn_predict_torch):
        got = predict(train, labels, test, (1, 2, 3, 4), 3, vote="majority")
        assert {k: p.item() for k, p in got.items()} == {1: 2, 2: 2, 3: 1, 4: 2}


def clusters(n_per_class, num_classes=5, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = F.one_hot(labels, dim).float() + 0.05 * torch.randn(len(labels), dim, generator=g)
    return F.normalize(feats, dim=1), labels


def test_separable_clusters_are_perfect():
    train, train_labels = clusters(100)
    test, test_labels = clusters(8, seed=1)
    accs = knn_accuracy(train, train_labels, test, test_labels)
    assert accs == {10: 100.0, 20: 100.0, 100: 100.0, 200: 100.0}
    assert dogo_knn_mean(train, train_labels, test, test_labels) == 100.0


def test_fewer_than_100_test_images_with_default_chunking():
    train, labels, test = random_problem(300, 99)
    got = knn_predict(train, labels, test, (20,), 5)
    assert torch.equal(got[20], knn_predict_torch(train, labels, test, (20,), 5)[20])


def test_rejects_bad_arguments():
    train, labels, test = random_problem(10, 2)
    with pytest.raises(ValueError, match="vote"):
        knn_predict(train, labels, test, (1,), 5, vote="soft")
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(train, labels, test, (0,), 5)
    with pytest.raises(ValueError, match="shapes"):
        knn_predict(train, labels, test[:, :3], (1,), 5)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(train, labels, test, (1,), int(labels.max()))


class VectorDataset(Dataset):
    """Item i is (vector i, label i, i), like the project's data sets."""

    def __init__(self, n=10, dim=4):
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(0))
        self.y = torch.arange(n) % 3

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i]), i


def test_extract_features_respects_indices_and_normalises():
    data = VectorDataset()
    loader = DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1))
    feats, labels = extract_features(lambda x: 5.0 * x, loader)
    assert feats.dtype == torch.float32 and labels.dtype == torch.long
    assert torch.allclose(feats, F.normalize(data.x, dim=1), atol=1e-6)
    assert torch.equal(labels, data.y)
    assert torch.allclose(feats.norm(dim=1), torch.ones(len(data)))


def test_extract_features_refuses_a_loader_that_skips_samples():
    loader = DataLoader(VectorDataset(), batch_size=3, drop_last=True)
    with pytest.raises(ValueError, match="never yielded"):
        extract_features(lambda x: x, loader)


def _distributed_worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    data = VectorDataset(n=9)  # odd: DistributedSampler pads one rank with a duplicate
    loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, shuffle=True, seed=3))
    feats, labels = extract_features(lambda x: x, loader)
    if rank == 0:
        # A plain loader on one rank must not wait for the others (evaluation on the main process only).
        alone = extract_features(lambda x: x, DataLoader(data, batch_size=4))
        torch.save((feats, labels, *alone), out_file)
    dist.barrier()
    dist.destroy_process_group()


def test_extract_features_gathers_across_ranks():
    with tempfile.TemporaryDirectory() as tmp:
        out_file = os.path.join(tmp, "out.pt")
        mp.spawn(_distributed_worker, args=(os.path.join(tmp, "init"), out_file), nprocs=2)
        feats, labels, feats_alone, labels_alone = torch.load(out_file)
    data = VectorDataset(n=9)
    for f, y in ((feats, labels), (feats_alone, labels_alone)):
        assert torch.allclose(f, F.normalize(data.x, dim=1), atol=1e-6)
        assert torch.equal(y, data.y)


# ---------------------------------------------------------------------------------------------- top-5 (issue 17 item 6)
def fan(n):
    """n unit vectors at angles 0.1, 0.2, ...: neighbour i of a query at angle 0 is train row i."""
    return torch.tensor([unit(0.1 * (i + 1)) for i in range(n)])


def test_top5_differs_from_top1_hand_computed():
    from sslkd.eval.knn import knn_rank, knn_topk_accuracy

    # Seven neighbours of classes 0..6 in order of similarity; T=0.07 makes the weighted votes strictly decreasing.
    train, labels = fan(7), torch.arange(7)
    test = torch.tensor([unit(0.0)] * 3)
    test_labels = torch.tensor([4, 6, 0])
    for reference in (False, True):
        ranked = knn_rank(train, labels, test, (1, 3, 20), 10, top=5, reference=reference)
        assert ranked[1].tolist() == [[0]] * 3
        assert ranked[3].tolist() == [[0, 1, 2]] * 3  # DINO: top-5 over the first min(5, k) classes
        assert ranked[20].tolist() == [[0, 1, 2, 3, 4]] * 3  # k capped at the 7 train rows
    accs = knn_topk_accuracy(train, labels, test, test_labels, ks=(1, 3, 20), num_classes=10)
    third = 100.0 / 3
    # label 4 is the 5th class: a top-5 hit only once k >= 5; label 6 is 7th: never; label 0: always
    assert accs[1] == pytest.approx({1: third, 5: third})
    assert accs[3] == pytest.approx({1: third, 5: third})
    assert accs[20] == pytest.approx({1: third, 5: 2 * third})
    assert knn_accuracy(train, labels, test, test_labels, ks=(1, 3, 20), num_classes=10) == pytest.approx(
        {k: a[1] for k, a in accs.items()}
    )


def test_majority_ranking_breaks_ties_by_nearest_then_unvoted_classes_last():
    from sslkd.eval.knn import knn_rank

    # neighbours' classes in order of similarity: 0, 1, 1, 2, 2, 2, 3 -> counts 2:3, 1:2, 0:1, 3:1 (0 is nearer)
    train, labels = fan(7), torch.tensor([0, 1, 1, 2, 2, 2, 3])
    test = torch.tensor([unit(0.0)])
    for reference in (False, True):
        ranked = knn_rank(train, labels, test, (7,), 6, vote="majority", top=5, reference=reference)
        assert ranked[7].tolist() == [[2, 1, 0, 3, 4]]  # class 5 would follow class 4: neither has a vote
        # weighted, T=1: similar votes; class 2's three neighbours outweigh the nearer ones
        weighted = knn_rank(train, labels, test, (7,), 6, temperature=1.0, top=6, reference=reference)[7]
        assert weighted.tolist() == [[2, 1, 0, 3, 4, 5]]


@pytest.mark.parametrize("vote", ["weighted", "majority"])
def test_ranking_faiss_matches_torch_and_first_column_is_the_prediction(vote):
    from sslkd.eval.knn import knn_rank

    train, labels, test = random_problem(300, 41, num_classes=8)
    ks = (1, 4, 20, 100)
    got = knn_rank(train, labels, test, ks, 8, vote=vote, chunk_size=16, top=5)
    ref = knn_rank(train, labels, test, ks, 8, vote=vote, top=5, reference=True)
    preds = knn_predict(train, labels, test, ks, 8, vote=vote)
    for k in ks:
        assert got[k].shape == (41, min(5, k))
        assert torch.equal(got[k], ref[k]), k
        assert torch.equal(got[k][:, 0], preds[k]), k


def test_protocol_records_top5_beside_top1(tiny_cfg):
    from sslkd.eval.protocol import knn_results

    train, labels = fan(7), torch.arange(7)
    test, test_labels = torch.tensor([unit(0.0)] * 3), torch.tensor([4, 6, 0])
    cfg = tiny_cfg("dino", ["eval.knn_k=[3, 20]"])
    results = knn_results(train, labels, test, test_labels, cfg, 10)
    third = 100.0 / 3
    assert results["knn_top1"] == pytest.approx(third) and results["knn_top5"] == pytest.approx(2 * third)
    assert results["knn"] == pytest.approx({"3": third, "20": third})
    assert results["knn_top5_per_k"] == pytest.approx({"3": third, "20": 2 * third})
    assert "knn_dogo_mean" in results
