import importlib.util
import sys
import types

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def import_segment_anything():
    """segment-anything's modeling and registry, without its package __init__ (which imports
    torchvision for the predictor helpers; torchvision has no CPU build for our torch)."""
    if "segment_anything.build_sam" in sys.modules:
        return sys.modules["segment_anything.build_sam"], sys.modules["segment_anything.modeling"]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None:
        pytest.skip("segment-anything is not installed (pip install --no-deps segment-anything)")
    package = types.ModuleType("segment_anything")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["segment_anything"] = package
    import segment_anything.build_sam as build_sam
    import segment_anything.modeling as modeling

    return build_sam, modeling


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
