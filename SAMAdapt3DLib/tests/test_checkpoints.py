import collections

import pytest
import torch

from samadapt3d.checkpoints import check_state_dict, load_weights, save_safetensors, load_safetensors, sha256_of
from samadapt3d.errors import CheckpointError


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_plain_state_dict_loads(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.ones(2), "nested": {"b": torch.zeros(3)}, "epoch": 3}, path)
    obj = load_weights(path)
    assert torch.equal(obj["a"], torch.ones(2)) and obj["epoch"] == 3


def test_file_needing_code_execution_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_weights(path)
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_are_refused(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_weights(path)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"a": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError):
        load_weights(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tmp_path / "nope.pth")


def test_non_dict_is_refused(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(torch.ones(3), path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_weights(path)


def test_safetensors_round_trip_with_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors({"x": torch.arange(4.0)}, path, {"config": {"depth": 2}, "name": "n"})
    assert torch.equal(load_safetensors(path)["x"], torch.arange(4.0))
    assert len(sha256_of(path)) == 64
    assert not (tmp_path / "m.safetensors.partial").exists()


def test_check_state_dict_names_every_problem():
    module = torch.nn.Sequential(collections.OrderedDict(lin=torch.nn.Linear(3, 4), out=torch.nn.Linear(4, 1)))
    state = module.state_dict()
    state["lin.weight"] = torch.zeros(5, 3)
    del state["out.bias"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        check_state_dict(module, state, source="x.pth")
    message = str(info.value)
    assert "lin.weight" in message and "(5, 3)" in message
    assert "missing keys: out.bias" in message
    assert "unexpected keys: extra.weight" in message
    # Tolerated problems are returned instead.
    state["lin.weight"] = torch.zeros(4, 3)
    missing, unexpected = check_state_dict(module, state, source="x", allow_missing=["out.bias"],
                                           allow_unexpected=True)
    assert missing == ["out.bias"] and unexpected == ["extra.weight"]
