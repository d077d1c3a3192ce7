"""NeighborSearch backends against brute force, and the EmbeddingBank."""

import itertools

import faiss
import pytest
import torch
import torch.nn.functional as F

from softcontrast.components.bank import EmbeddingBank
from softcontrast.components.neighbors import (
    AUTO_MIN_RECALL,
    MEASURED_CPU,
    NeighborSearch,
    auto_backend,
    default_nlist,
)

EXACT = ("torch", "faiss-flat", "auto")


def unit(count: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(count, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def clustered(count: int, dim: int, seed: int, clusters: int = 20) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=generator), dim=1)
    labels = torch.randint(clusters, (count,), generator=generator)
    return F.normalize(centres[labels] + 0.1 * torch.randn(count, dim, generator=generator), dim=1)


def brute_force(queries, index, ids, k):
    scores, positions = (queries @ index.T).topk(k, dim=1)
    return scores, ids[positions]


@pytest.mark.parametrize("backend", EXACT)
def test_exact_backends_agree_with_brute_force(backend):
    index, queries = unit(700, 16, 0), unit(33, 16, 1)
    ids = torch.randperm(700, generator=torch.Generator().manual_seed(2)) + 1000
    search = NeighborSearch(backend, chunk_size=97)
    search.add(index[:300], ids[:300])
    search.add(index[300:], ids[300:])
    scores, found = search.search(queries, 12)
    expected_scores, expected_ids = brute_force(queries, index, ids, 12)
    assert torch.equal(found, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", EXACT)
def test_stored_vectors_are_normalised_and_queries_used_as_given(backend):
    index, queries = unit(50, 8, 3), unit(4, 8, 4)
    search = NeighborSearch(backend)
    search.add(index * torch.linspace(0.5, 3.0, 50)[:, None])
    scores, found = search.search(2 * queries, 5)
    expected_scores, expected_ids = brute_force(2 * queries, index, torch.arange(50), 5)
    assert torch.equal(found, expected_ids)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)


def test_ivf_scanning_every_list_is_exact():
    index, queries = clustered(2000, 16, 5), clustered(40, 16, 6)
    search = NeighborSearch("faiss-ivf", nlist=16, nprobe=16)
    search.add(index)
    scores, found = search.search(queries, 10)
    expected_scores, expected_ids = brute_force(queries, index, torch.arange(2000), 10)
    torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    assert (found[:, :, None] == expected_ids[:, None, :]).any(dim=1).all()


def test_ivf_recall_is_at_least_90_percent_with_a_quarter_of_the_lists_on_clustered_data():
    index, queries = clustered(4000, 32, 7), clustered(100, 32, 8)
    search = NeighborSearch("faiss-ivf", nlist=default_nlist(4000), nprobe=max(1, default_nlist(4000) // 4))
    search.add(index)
    _, found = search.search(queries, 10)
    _, expected = brute_force(queries, index, torch.arange(4000), 10)
    recall = (found[:, :, None] == expected[:, None, :]).any(dim=1).float().mean()
    assert recall >= 0.9


@pytest.mark.parametrize("backend", ("torch", "faiss-flat", "faiss-ivf"))
def test_at_most_the_index_size_is_returned_and_reset_empties(backend):
    search = NeighborSearch(backend)
    search.add(unit(60, 4, 9))
    scores, found = search.search(unit(3, 4, 10), 100)
    assert scores.shape[1] <= 60 and found.shape == scores.shape
    assert set(found[found >= 0].tolist()) <= set(range(60))
    search.reset()
    assert len(search) == 0
    scores, found = search.search(unit(3, 4, 10), 5)
    assert scores.shape == (3, 0) and found.shape == (3, 0)


@pytest.mark.parametrize("searches_per_build", [1.0, float("inf")])
def test_auto_picks_the_fastest_accurate_backend_of_the_measured_table(searches_per_build):
    for size, measured in MEASURED_CPU.items():
        chosen = auto_backend(size, searches_per_build=searches_per_build)
        build, search, recall = measured[chosen]
        assert recall >= AUTO_MIN_RECALL
        for other_build, other_search, other_recall in measured.values():
            if other_recall >= AUTO_MIN_RECALL:
                assert build / searches_per_build + search <= other_build / searches_per_build + other_search
    assert auto_backend(10**9) == auto_backend(max(MEASURED_CPU))
    assert auto_backend(1) == auto_backend(min(MEASURED_CPU))
    assert auto_backend(100, device="cuda") == "torch"


def test_auto_resolves_by_the_index_size_at_the_first_build():
    search = NeighborSearch("auto")
    search.add(unit(64, 4, 11))
    search.build()
    assert search.resolved_backend == auto_backend(64)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="unknown neighbor-search backend"):
        NeighborSearch("annoy")
    search = NeighborSearch("torch")
    search.add(unit(5, 4, 12))
    with pytest.raises(ValueError, match="k must be >= 1"):
        search.search(unit(2, 4, 13), 0)
    with pytest.raises(ValueError, match="one id per embedding"):
        search.add(unit(5, 4, 12), torch.arange(4))


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="faiss sees a GPU here")
@pytest.mark.parametrize("backend", ("faiss-flat", "faiss-ivf"))
def test_faiss_gpu_without_a_gpu_is_refused(backend):
    with pytest.raises(ValueError, match="faiss sees no GPU"):
        NeighborSearch(backend, device="cuda")


def test_bank_is_searched_as_of_its_last_refresh():
    embeddings = unit(10, 8, 14)
    bank = EmbeddingBank(num_samples=10, dim=8, refresh_every=1, backend="torch")
    assert bank.search(embeddings[:2], 3)[1].shape == (2, 0)
    bank.update(embeddings[:6], torch.arange(6))
    assert bank.search(embeddings[:2], 3)[1].shape == (2, 0)
    bank.update(embeddings[6:], torch.arange(6, 10))
    scores, found = bank.search(embeddings[:2], 1)
    assert found[:, 0].tolist() == [0, 1]
    torch.testing.assert_close(scores[:, 0], torch.ones(2))


def test_bank_checkpoint_restores_a_searchable_index():
    embeddings = unit(12, 8, 15)
    bank = EmbeddingBank(num_samples=12, dim=8, backend="faiss-flat")
    bank.update(embeddings, torch.arange(12))
    restored = EmbeddingBank(num_samples=12, dim=8, backend="faiss-flat")
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.search(embeddings, 3)[1], bank.search(embeddings, 3)[1])


def test_bank_rejects_bad_sizes():
    with pytest.raises(ValueError, match="refresh_every"):
        EmbeddingBank(10, 4, refresh_every=0)
    with pytest.raises(ValueError, match="num_samples"):
        EmbeddingBank(0, 4)


def refill(search, vectors, ids=None):
    search.reset()
    search.add(vectors, ids)
    search.build()


def centroids(search):
    quantizer = search.faiss_index.quantizer
    return quantizer.reconstruct_n(0, quantizer.ntotal)


@pytest.mark.parametrize("backend", ("faiss-flat", "faiss-ivf"))
def test_faiss_index_is_made_once_and_refilled_with_exact_results(backend):
    search = NeighborSearch(backend, nlist=4, nprobe=4)  # IVF scanning all lists is exact
    indexes = []
    for step in range(3):
        index, queries = clustered(300, 8, 30 + step), unit(5, 8, 40 + step)
        refill(search, index)
        scores, _ = search.search(queries, 7)
        torch.testing.assert_close(scores, brute_force(queries, index, torch.arange(300), 7)[0], atol=1e-5, rtol=0)
        indexes.append(search.faiss_index)
    assert all(index is indexes[0] for index in indexes)


def test_ivf_lists_are_trained_once_then_again_on_growth_or_on_schedule():
    grows = NeighborSearch("faiss-ivf", nlist=4, nprobe=4)
    refill(grows, clustered(200, 8, 50))
    trained = centroids(grows)
    for seed, count in ((51, 200), (52, 399)):
        refill(grows, clustered(count, 8, seed))
        assert torch.equal(centroids(grows), trained)
    refill(grows, clustered(400, 8, 53))  # twice the vectors the lists were trained on
    assert not torch.equal(centroids(grows), trained)

    scheduled = NeighborSearch("faiss-ivf", nlist=4, nprobe=4, retrain_every=2, retrain_growth=None)
    history = []
    for seed in range(54, 59):
        refill(scheduled, clustered(200 if seed < 57 else 1000, 8, seed))
        history.append(centroids(scheduled))
    retrained = [not torch.equal(after, before) for before, after in itertools.pairwise(history)]
    assert retrained == [False, True, False, True]


@pytest.mark.parametrize("backend", ("torch", "faiss-flat", "faiss-ivf"))
def test_entries_with_negative_ids_are_never_returned_and_faiss_leaves_them_out(backend):
    vectors, queries = unit(160, 8, 60), unit(6, 8, 61)
    filled = torch.arange(160) % 4 == 0
    search = NeighborSearch(backend, nlist=4, nprobe=4)
    search.add(vectors, torch.arange(160).masked_fill(~filled, -1))
    scores, found = search.search(queries, 50)
    expected_scores, expected_ids = brute_force(queries, vectors[filled], torch.arange(160)[filled], 40)
    assert torch.equal(found[:, :40], expected_ids)
    torch.testing.assert_close(scores[:, :40], expected_scores, atol=1e-5, rtol=0)
    assert (found[:, 40:] == -1).all() and (scores[:, 40:] == float("-inf")).all()
    if backend != "torch":
        assert search.faiss_index.ntotal == 40 and found.shape[1] == 40


def test_ivf_bank_is_searchable_before_its_first_refresh_and_keeps_its_index():
    bank = EmbeddingBank(num_samples=200, dim=8, backend="faiss-ivf", nlist=4, nprobe=4)
    queries = unit(3, 8, 62)
    assert bank.search(queries, 5)[1].shape == (3, 0)
    bank.update(clustered(200, 8, 63), torch.arange(200))
    bank.search(queries, 5)
    index, trained = bank.index.faiss_index, centroids(bank.index)
    embeddings = clustered(200, 8, 64)
    bank.update(embeddings, torch.arange(200))
    scores, _ = bank.search(queries, 5)
    assert bank.index.faiss_index is index and torch.equal(centroids(bank.index), trained)
    torch.testing.assert_close(scores, brute_force(queries, embeddings, torch.arange(200), 5)[0], atol=1e-5, rtol=0)


class StandInGpuFaiss:
    """faiss whose "GPU" indexes are its CPU indexes: records the GPU, the resources and every k asked."""

    def __init__(self):
        self.resources, self.placed, self.asked = 0, [], []

    def __getattr__(self, name):
        return getattr(faiss, name)

    def get_num_gpus(self):
        return 2

    def StandardGpuResources(self):
        self.resources += 1
        return object()

    def index_cpu_to_gpu(self, resources, gpu, index):
        self.placed.append(gpu)
        return StandInGpuIndex(index, self.asked)


class StandInGpuIndex:
    def __init__(self, index, asked):
        self.__dict__.update(index=index, asked=asked)

    def __getattr__(self, name):
        return getattr(self.index, name)

    def __setattr__(self, name, value):
        setattr(self.index, name, value)

    def search(self, queries, k):
        self.asked.append(k)
        return self.index.search(queries, k)


@pytest.fixture
def gpu_faiss(monkeypatch):
    """The stand-in faiss, seen from a process whose current GPU is 1."""
    from softcontrast.components import neighbors

    stand_in = StandInGpuFaiss()
    monkeypatch.setattr(neighbors, "_faiss", lambda: stand_in)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    neighbors.gpu_resources.cache_clear()
    yield stand_in
    neighbors.gpu_resources.cache_clear()


def test_faiss_gpu_index_lives_on_the_process_device_with_one_shared_resources(gpu_faiss):
    searches = [NeighborSearch("faiss-flat", device="cuda"), NeighborSearch("faiss-flat", device="cuda")]
    for step in range(3):
        index, queries = unit(100, 8, 70 + step), unit(4, 8, 80 + step)
        for search in searches:
            refill(search, index)
            scores, found = search.search(queries, 5)
            expected_scores, expected_ids = brute_force(queries, index, torch.arange(100), 5)
            assert torch.equal(found, expected_ids)
            torch.testing.assert_close(scores, expected_scores, atol=1e-5, rtol=0)
    assert gpu_faiss.placed == [1, 1] and gpu_faiss.resources == 1
    refill(NeighborSearch("faiss-flat", device="cuda:0"), index)
    assert gpu_faiss.placed == [1, 1, 0] and gpu_faiss.resources == 2


def test_faiss_gpu_k_is_capped_by_the_filled_entries_and_refused_above_the_gpu_limit(gpu_faiss):
    vectors, queries = unit(3000, 8, 90), unit(2, 8, 91)
    search = NeighborSearch("faiss-flat", device="cuda")
    search.add(vectors, torch.arange(3000).masked_fill(torch.arange(3000) >= 100, -1))
    assert search.search(queries, 2500)[1].shape == (2, 100) and gpu_faiss.asked == [100]
    refill(search, vectors)
    with pytest.raises(ValueError, match="at most 2048 neighbours per query, asked for k=2049.*lower k"):
        search.search(queries, 2049)
    assert search.search(queries, 2048)[1].shape == (2, 2048) and gpu_faiss.asked == [100, 2048]


def test_faiss_gpu_ivf_refuses_more_lists_per_query_than_the_gpu_scans(gpu_faiss):
    search = NeighborSearch("faiss-ivf", device="cuda", nprobe=2049)
    with pytest.raises(ValueError, match="at most 2048 IVF lists per query, got nprobe=2049: lower nprobe"):
        refill(search, unit(300, 8, 92))
    assert gpu_faiss.placed == []
    refill(NeighborSearch("faiss-ivf", device="cuda", nprobe=2048), unit(300, 8, 93))
    assert gpu_faiss.placed == [1]
