"""Our SAM parts against segment-anything's own modules on the same weights."""
import pytest
import torch

from samadapt3d.sam import build_sam
from samadapt3d.sam.build_sam import SAM_SIZES


def _reference_sam(sam_build, modeling, size):
    """A segment-anything Sam of the given size, built from its own modules."""
    from functools import partial

    s = SAM_SIZES[size]
    grid = s.img_size // s.patch_size
    return modeling.Sam(
        image_encoder=modeling.ImageEncoderViT(
            depth=s.depth, embed_dim=s.embed_dim, img_size=s.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=s.num_heads, patch_size=s.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=s.global_attn_indexes,
            window_size=s.window_size, out_chans=s.prompt_embed_dim,
        ),
        prompt_encoder=modeling.PromptEncoder(
            embed_dim=s.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(s.img_size, s.img_size), mask_in_chans=16,
        ),
        mask_decoder=modeling.MaskDecoder(
            num_multimask_outputs=3,
            transformer=modeling.TwoWayTransformer(
                depth=2, embedding_dim=s.prompt_embed_dim, mlp_dim=s.decoder_mlp_dim, num_heads=s.decoder_heads
            ),
            transformer_dim=s.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=s.prompt_embed_dim,
        ),
    )


def test_vit_b_state_dict_matches_segment_anything_registry(segment_anything):
    sam_build, _ = segment_anything
    reference = sam_build.sam_model_registry["vit_b"]().state_dict()
    ours = build_sam("vit_b").state_dict()
    assert set(ours) == set(reference)
    for key, value in reference.items():
        assert ours[key].shape == value.shape, key
    # A real-format file from segment-anything's registry loads strictly into ours.
    build_sam("vit_b").load_state_dict(reference, strict=True)


@pytest.mark.parametrize("multimask", [False, True])
def test_same_outputs_as_segment_anything(segment_anything, multimask):
    sam_build, modeling = segment_anything
    reference = _reference_sam(sam_build, modeling, "vit_tiny").eval()
    ours = build_sam("vit_tiny").eval()
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in reference.state_dict().items()}
    reference.load_state_dict(state)
    ours.load_state_dict(state, strict=True)

    image = torch.randn(1, 3, 128, 128)
    points = (torch.tensor([[[30.0, 40.0], [90.0, 70.0]]]), torch.tensor([[1, 0]]))
    box = torch.tensor([[20.0, 25.0, 100.0, 110.0]])
    mask = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        emb_ref = reference.image_encoder(image)
        emb = ours.image_encoder(image)
        torch.testing.assert_close(emb, emb_ref, atol=1e-5, rtol=1e-5)
        for kwargs in ({"points": points, "boxes": None, "masks": None},
                       {"points": points, "boxes": box, "masks": mask},
                       {"points": None, "boxes": box, "masks": None}):
            sparse_ref, dense_ref = reference.prompt_encoder(**kwargs)
            sparse, dense = ours.prompt_encoder(**kwargs)
            torch.testing.assert_close(sparse, sparse_ref)
            torch.testing.assert_close(dense, dense_ref)
            out_ref = reference.mask_decoder(emb_ref, reference.prompt_encoder.get_dense_pe(), sparse_ref, dense_ref,
                                             multimask)
            out = ours.mask_decoder(emb, ours.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
            torch.testing.assert_close(out[0], out_ref[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[1], out_ref[1], atol=1e-4, rtol=1e-4)


def test_tiny_vit_conv_bn_folds_only_for_inference():
    """Conv2dBN folds BatchNorm into the convolution for inference; training and learning use both layers, and a
    change of weights (e.g. a checkpoint loaded later) is picked up."""
    from samadapt3d.sam.tiny_vit import Conv2dBN

    torch.manual_seed(0)
    layer = Conv2dBN(6, 8, kernel=3, groups=2)
    with torch.no_grad():
        layer.bn.running_mean.normal_()
        layer.bn.running_var.uniform_(0.5, 2.0)
        layer.bn.weight.normal_()
        layer.bn.bias.normal_()
    x = torch.randn(2, 6, 9, 9)
    layer.eval()
    expected = layer.bn(layer.c(x))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        assert layer._fused is not None
        layer.c.weight.mul_(2.0)
        torch.testing.assert_close(layer(x), layer.bn(layer.c(x)), rtol=1e-5, atol=1e-5)
    out = layer(x)  # grad enabled and trainable weights: the unfused path, so gradients reach the conv
    out.sum().backward()
    assert layer.c.weight.grad is not None
