import importlib
import importlib.util
import os
import sys
import types

import pytest
import torch


from ci_requirements import import_segment_anything, in_ci, missing, require_module  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_folder(tmp_path_factory):
    """Exported encoders go to a fresh folder, never the user's cache; the on-disk embedding store is off, so
    a test's "embedded" counts do not depend on the tests before it (tests of the store turn it on)."""
    names = ("SAMADAPT3D_CACHE_DIR", "SAMADAPT3D_EMBEDDING_CACHE")
    old = {name: os.environ.get(name) for name in names}
    os.environ["SAMADAPT3D_CACHE_DIR"] = str(tmp_path_factory.mktemp("samadapt3d_cache"))
    os.environ["SAMADAPT3D_EMBEDDING_CACHE"] = "off"
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def segment_anything():
    return import_segment_anything()


def _randomise(module: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (zero-initialised LoRA B, adapters...) so a test
    of the published algorithm sees every weight at work."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


@pytest.fixture(scope="session")
def randomise():
    return _randomise


@pytest.fixture(scope="session")
def tiny_sam_base(tmp_path_factory):
    """A randomised tiny SAM base file in segment-anything's layout: (path, state dict)."""
    from samadapt3d.sam import build_sam

    torch.manual_seed(1)
    base = build_sam("vit_tiny")
    _randomise(base)
    path = tmp_path_factory.mktemp("sam_base") / "sam_tiny.pth"
    torch.save(base.state_dict(), path)
    return path, base.state_dict()


class SamReference:
    """segment-anything's own modules for a SAM size, built the way the published adapter scripts build them
    (tests compare our families against these)."""

    def __init__(self, modeling) -> None:
        self.modeling = modeling

    def encoder(self, size: str, image_size: int):
        from functools import partial

        from samadapt3d.sam.build_sam import SAM_SIZES

        s = SAM_SIZES[size]
        return self.modeling.ImageEncoderViT(
            depth=s.depth, embed_dim=s.embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=s.num_heads, patch_size=s.patch_size,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=s.global_attn_indexes,
            window_size=s.window_size, out_chans=s.prompt_embed_dim,
        )

    @staticmethod
    def resized_encoder_state(base_state, size: str, image_size: int) -> dict:
        """The SAM base encoder's tensors with the position grid and the global blocks' relative-position tables
        resized bilinearly to `image_size` (SAMed's and MA-SAM's `load_from`)."""
        import torch.nn.functional as F

        from samadapt3d.sam.build_sam import SAM_SIZES

        s = SAM_SIZES[size]
        grid = image_size // s.patch_size
        enc = {k[len("image_encoder."):]: v.clone() for k, v in base_state.items() if k.startswith("image_encoder.")}
        enc["pos_embed"] = F.interpolate(enc["pos_embed"].permute(0, 3, 1, 2), (grid, grid), mode="bilinear",
                                         align_corners=False).permute(0, 2, 3, 1)
        for i in s.global_attn_indexes:
            for name in ("rel_pos_h", "rel_pos_w"):
                t = enc[f"blocks.{i}.attn.{name}"]
                enc[f"blocks.{i}.attn.{name}"] = F.interpolate(t[None, None], (2 * grid - 1, t.shape[1]),
                                                               mode="bilinear", align_corners=False)[0, 0]
        return enc

    def prompt_and_decoder(self, size: str, image_size: int, num_multimask_outputs: int, state=None):
        """PromptEncoder and MaskDecoder; loaded from `state` (prompt_encoder.* / mask_decoder.* keys) if given."""
        from samadapt3d.sam.build_sam import SAM_SIZES

        s = SAM_SIZES[size]
        grid = image_size // s.patch_size
        m = self.modeling
        prompt = m.PromptEncoder(embed_dim=s.prompt_embed_dim, image_embedding_size=(grid, grid),
                                 input_image_size=(image_size, image_size), mask_in_chans=16)
        decoder = m.MaskDecoder(
            num_multimask_outputs=num_multimask_outputs,
            transformer=m.TwoWayTransformer(depth=2, embedding_dim=s.prompt_embed_dim,
                                            mlp_dim=s.decoder_mlp_dim, num_heads=s.decoder_heads),
            transformer_dim=s.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=s.prompt_embed_dim,
        )
        if state is not None:
            prompt.load_state_dict({k[len("prompt_encoder."):]: v for k, v in state.items()
                                    if k.startswith("prompt_encoder.")})
            decoder.load_state_dict({k[len("mask_decoder."):]: v for k, v in state.items()
                                     if k.startswith("mask_decoder.")})
        return prompt, decoder


@pytest.fixture(scope="session")
def sam_reference(segment_anything):
    return SamReference(segment_anything[1])
