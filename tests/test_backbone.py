"""The timm backbone's options: frozen batch norms, the colour skip, a frozen body."""

import torch

from visionllm.modeling.backbone import Backbone


def test_frozen_batch_norms_make_each_image_independent_of_its_batch():
    torch.manual_seed(0)
    b = Backbone(name="resnet10t", d_model=32, frozen_bn=True).train()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())
    x = torch.randn(4, 3, 64, 64)
    together = b(x)
    alone = b(x[:1])
    for t, a in zip(together, alone):
        torch.testing.assert_close(t[:1], a, rtol=1e-5, atol=1e-5)
    # with batch statistics the same image gives other numbers in another batch
    plain = Backbone(name="resnet10t", d_model=32).train()
    assert not torch.allclose(plain(x)[0][:1], plain(x[:1])[0], atol=1e-3)


def test_frozen_norms_keep_a_checkpoints_statistics(tmp_path):
    from safetensors.torch import save_file

    src = Backbone(name="resnet10t", d_model=32)
    state = {k: v.clone() for k, v in src.body.state_dict().items()}
    key = next(k for k in state if k.endswith("running_mean"))
    state[key] = torch.full_like(state[key], 0.25)
    save_file(state, str(tmp_path / "r10t.safetensors"))
    b = Backbone(name="resnet10t", d_model=32, checkpoint=str(tmp_path / "r10t.safetensors"), frozen_bn=True)
    assert torch.equal(b.body.state_dict()[key], state[key])


def test_color_skip_feeds_the_pooled_image_to_every_level():
    torch.manual_seed(0)
    b = Backbone(name="resnet10t", d_model=32, color_skip=True).eval()
    c = b.body.feature_info.channels()
    assert [p[0].in_channels for p in b.input_proj] == [c[0] + 3, c[1] + 3, c[2] + 3, c[2] + 3]
    # silence the learned features: what is left of each level is the image's colour
    with torch.no_grad():
        for p in b.input_proj[:3]:
            p[0].weight[:, :-3] = 0
    red, blue = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    for lr, lb in zip(b(red)[:3], b(blue)[:3]):
        assert not torch.allclose(lr, lb, atol=1e-4)


def test_channels_last_gives_the_same_maps_and_gradients():
    torch.manual_seed(0)
    a = Backbone(name="resnet10t", d_model=32, color_skip=True, channels_last=False).train()
    b = Backbone(name="resnet10t", d_model=32, color_skip=True, channels_last=True).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    outs = [m(x) for m in (a, b)]
    for oa, ob in zip(*outs):
        torch.testing.assert_close(oa, ob, rtol=1e-4, atol=1e-5)
    for o in outs:
        sum(t.square().mean() for t in o).backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert pb.is_contiguous(), name  # the weights keep their layout: checkpoints and DDP see no change
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-3, atol=1e-5, msg=name)
