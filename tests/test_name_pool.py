"""model.name_pool: the class slot's name vector as a learned weighing of the name's words."""

import torch

from visionllm.modeling.name_pool import NamePool


def test_untrained_pool_is_the_mean_and_padding_counts_nothing():
    torch.manual_seed(0)
    pool = NamePool(16, width=8)
    emb = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float)
    out = pool(emb, mask)
    assert torch.allclose(out[0], emb[0, :3].mean(0), atol=1e-6)
    assert torch.allclose(out[1], emb[1].mean(0), atol=1e-6)
    assert torch.equal(out[2], torch.zeros(16))  # no words: nothing, not NaN
    w = pool.weights(emb, mask)
    assert torch.equal(w[0, 3:], torch.zeros(2)) and torch.allclose(w.sum(1), torch.tensor([1.0, 1.0, 0.0]))


def test_it_learns_to_drop_the_word_after_a_relation():
    """Names "<head> <rel> <anchor>" or "<head>", the target the head's own vector: the pool
    learns to weigh the anchor (the word after the relation word) near zero, which the mean
    cannot (it gives the anchor a third)."""
    g = torch.Generator().manual_seed(0)
    nouns = torch.randn(12, 16, generator=g)
    rel = torch.randn(16, generator=g)
    pool = NamePool(16, width=16)
    opt = torch.optim.Adam(pool.parameters(), lr=1e-2)

    def batch():
        h, a = torch.randint(0, 12, (32,), generator=g), torch.randint(0, 12, (32,), generator=g)
        emb = torch.stack([nouns[h], rel.expand(32, 16), nouns[a]], 1)
        mask = torch.ones(32, 3)
        mask[:8, 1:] = 0  # some names are the head alone
        return emb, mask, nouns[h]

    for _ in range(300):
        emb, mask, target = batch()
        loss = -torch.nn.functional.cosine_similarity(pool(emb, mask), target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    emb, mask, _ = batch()
    w = pool.weights(emb, mask)[8:]
    assert w[:, 2].mean() < 0.1 and w[:, 0].mean() > 0.7, w.mean(0)


def test_the_model_takes_it_and_trains_it(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, extra=["model.name_pool=true"], task="grounding")
    assert isinstance(model.name_pool, NamePool)
    # the class pointer starts at zero, so the pool learns once the pointer has: as after some steps
    torch.nn.init.normal_(model.class_pointer.weight, std=0.02)
    out = model(collate([ds.sets["grounding"][i] for i in range(2)]))
    out["loss"].backward()
    assert model.name_pool.score.weight.grad.abs().sum() > 0
