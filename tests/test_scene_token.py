"""The scene (model.scene_token; image_tokenizer.level_means): what the whole image looks like
at each scale, added to every image token through a projection that starts at zero."""

import torch

from visionllm.modeling.image_tokenizer import level_means


def test_level_means_average_each_level_over_the_image_and_leave_the_padding_out():
    torch.manual_seed(0)
    sizes = [16, 4]  # a 4 x 4 level and a 2 x 2 one
    memory = torch.randn(2, 20, 3)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, 2:4] = True  # row 1: two padded pixels on the first level, one on the second
    pad[1, 19] = True
    out = level_means(memory, pad, sizes)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out[0], torch.cat([memory[0, :16].mean(0), memory[0, 16:].mean(0)]))
    keep1, keep2 = [i for i in range(16) if i not in (2, 3)], [16, 17, 18]
    torch.testing.assert_close(out[1], torch.cat([memory[1, keep1].mean(0), memory[1, keep2].mean(0)]))
    changed = memory.clone()
    changed[1, [2, 3, 19]] = 100.0  # what lies under the padding changes nothing
    torch.testing.assert_close(level_means(changed, pad, sizes), out)


def test_the_scene_starts_as_nothing_then_learns_from_text_answers(shapes_root, tmp_path):
    from helpers import tiny_model_and_sets
    from visionllm.data.transforms import collate

    model, ds = tiny_model_and_sets(shapes_root, tmp_path, extra=["model.scene_token=true"])
    batch = collate([ds.sets["caption"][0], ds.sets["caption"][1], ds.sets["detection"][0]])
    model.eval()
    with torch.no_grad():
        toks, _, v = model._image_tokens(batch)
        scene_proj, model.scene_proj = model.scene_proj, None
        _, _, plain = model._image_tokens(batch)
        model.scene_proj = scene_proj
    assert toks.scene.shape == (3, model.image_tokenizer.d_model * model.image_tokenizer.backbone.num_levels)
    assert toks.scene[0].ne(toks.scene[1]).any()  # two images, two scenes
    torch.testing.assert_close(v, plain)  # zero at the start: a checkpoint without it answers as before
    model.train()
    model(batch)["loss"].backward()
    assert model.scene_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        model.scene_proj.weight.add_(0.1 * torch.randn_like(model.scene_proj.weight))
    model.eval()  # (the training pass moved the batch norms' statistics: both read again)
    with torch.no_grad():
        _, _, moved = model._image_tokens(batch)
        model.scene_proj = None
        _, _, plain = model._image_tokens(batch)
        model.scene_proj = scene_proj
    shift = moved - plain  # one vector a image, the same at each of its tokens
    assert shift[0].abs().sum() > 0
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    assert shift[0, 0].ne(shift[1, 0]).any()
