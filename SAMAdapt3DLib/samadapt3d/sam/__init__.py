"""Segment Anything parts shared by every model family (segment-anything key names)."""
from .build_sam import SAM_SIZES, Sam, SamSize, build_sam, sam_model_registry
from .common import MLP, LayerNorm2d, LayerNorm3d, MLPBlock
from .image_encoder import ImageEncoderViT, add_decomposed_rel_pos, get_rel_pos
from .mask_decoder import MaskDecoder
from .prompt_encoder import PositionEmbeddingRandom, PromptEncoder
from .transformer import TwoWayTransformer

__all__ = [
    "SAM_SIZES", "Sam", "SamSize", "build_sam", "sam_model_registry", "MLP", "LayerNorm2d", "LayerNorm3d",
    "MLPBlock", "ImageEncoderViT", "add_decomposed_rel_pos", "get_rel_pos", "MaskDecoder",
    "PositionEmbeddingRandom", "PromptEncoder", "TwoWayTransformer",
]
