"""Vision towers of vision-language models walked and their blocks removed; shape-changing parts refused."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_VOCAB_SIZE, VISION_FAMILIES, save_tiny_model, tiny_model
from transformers import AutoModelForImageTextToText

from measure.compress.remove import remove_blocks, remove_part, save_removed
from measure.compress.shrink.shrink import ShrinkSettings, save_shrunk, shrink_model
from measure.models.architecture import describe
from pvq.cli import main
from theory.errors import PvqError

IMAGE_TOKEN = TINY_VOCAB_SIZE - 1
PATCHES = 4
"""A 16×16 image in 8×8 patches (the tiny CLIP / SigLIP configs): 4 image tokens; Qwen2-VL: 2×2 patches of an
8×8 image merged into one token."""
TOWERS = {
    "llava": ("model.vision_tower.encoder.layers", {"q", "k", "v", "o", "fc1", "fc2"}),
    "gemma3_vlm": ("model.vision_tower.encoder.layers", {"q", "k", "v", "o", "fc1", "fc2"}),
    "qwen2_vl": ("model.visual.blocks", {"qkv", "o", "fc1", "fc2"}),
}


def _inputs(family: str) -> dict[str, torch.Tensor]:
    text = torch.randint(3, 250, (1, 6), generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(6)
    if family == "qwen2_vl":
        image = torch.tensor([[TINY_VOCAB_SIZE - 3, IMAGE_TOKEN, TINY_VOCAB_SIZE - 4]])
        ids = torch.cat([text[:, :2], image, text[:, 2:]], dim=1)
        return {
            "input_ids": ids,
            "pixel_values": torch.randn(PATCHES, 3 * 2 * 4 * 4, generator=generator),
            "image_grid_thw": torch.tensor([[1, 2, 2]]),
            "mm_token_type_ids": (ids == IMAGE_TOKEN).long(),
        }
    ids = torch.cat([text[:, :2], torch.full((1, PATCHES), IMAGE_TOKEN), text[:, 2:]], dim=1)
    return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 16, 16, generator=generator)}


def _logits(model: torch.nn.Module, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs(family)).logits


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_vision_blocks_are_walked_with_roles_and_the_projector(family: str) -> None:
    model = tiny_model(family)
    arch = describe(model, "vision")
    blocks_path, roles = TOWERS[family]
    assert arch.blocks_path == blocks_path
    assert [block.kinds for block in arch.blocks] == [("attention", "mlp")] * 2
    assert {ref.role for ref in arch.linears} == roles
    patch_convolutions = [m for m in arch.embeddings.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d)]
    assert len(patch_convolutions) == 1
    assert arch.projector is getattr(model.model, "multi_modal_projector", None) or model.model.visual.merger
    assert describe(model).blocks_path == "model.language_model.layers"


@pytest.mark.parametrize(("family", "index"), [("llava", 0), ("gemma3_vlm", 1), ("qwen2_vl", 0)])
def test_a_removed_vision_block_reloads_and_runs_on_an_image(family: str, index: int, tmp_path) -> None:
    model = tiny_model(family)
    original = _logits(model, family)
    removal = remove_blocks(model, [index], tower="vision")
    expected = _logits(model, family)
    assert family == "gemma3_vlm" or not torch.equal(expected, original)  # the tiny Gemma-3 reads no image here
    save_removed(model, tmp_path, removal)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert reloaded.config.vision_config.num_hidden_layers == 1
    assert reloaded.config.text_config.num_hidden_layers == 2
    logits = _logits(reloaded, family)
    assert torch.isfinite(logits).all()
    tolerance = 1e-6 if family == "qwen2_vl" else 0.0  # Qwen2-VL reloads ~1e-7 apart even with nothing removed
    torch.testing.assert_close(logits, expected, rtol=tolerance, atol=tolerance)


def test_llava_feature_layer_follows_the_kept_blocks() -> None:
    """LLaVA reads the vision hidden state −2 (block 0's output of two); removing block 1, which it never
    reads, leaves the logits unchanged, and the feature layer points at the same block's output."""
    model = tiny_model("llava")
    original = _logits(model, "llava")
    remove_blocks(model, [1], tower="vision")
    assert model.config.vision_feature_layer == -1
    torch.testing.assert_close(_logits(model, "llava"), original, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("part", "why"),
    [("patch_embedding", r"patch_embedding \(Conv2d\) of the clip_vision_model tower of Llava.*no input"),
     ("projector", r"projector \(LlavaMultiModalProjector\).*do not fit the language model")],
)  # fmt: skip
def test_shape_changing_vision_parts_are_refused(part: str, why: str) -> None:
    model = tiny_model("llava")
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(PvqError, match=why):
        remove_part(model, part)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_pvq_remove_vision_tower(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    source = save_tiny_model("llava", tmp_path / "tiny")
    out = tmp_path / "removed"
    args = ["remove", "--model", str(source), "--tower", "vision", "--out", str(out)]
    assert main([*args, "--indices", "patch_embedding"]) == 2
    assert "cannot remove the patch_embedding" in capsys.readouterr().err
    assert not out.exists()
    assert main(["info", str(source), "--tower", "vision", "--json"]) == 0
    assert '"block_kinds": [\n    "attention+mlp",\n    "attention+mlp"\n  ]' in capsys.readouterr().out
    assert main([*args, "--indices", "0"]) == 0
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert reloaded.config.vision_config.num_hidden_layers == 1
    assert torch.isfinite(_logits(reloaded, "llava")).all()


def test_vision_mlps_shrink_and_reload(tmp_path) -> None:
    settings = ShrinkSettings(mlp=0.25, score="magnitude", refit=False, tower="vision")
    result = shrink_model(tiny_model("llava"), [], settings)
    assert result.config_changes == {"intermediate_size": 24}
    save_shrunk(result, tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    config = reloaded.config
    assert (config.vision_config.intermediate_size, config.text_config.intermediate_size) == (24, 64)
    torch.testing.assert_close(_logits(reloaded, "llava"), _logits(result.model, "llava"), rtol=0, atol=0)
    with pytest.raises(PvqError, match="--score magnitude --no-refit"):
        shrink_model(tiny_model("llava"), [], ShrinkSettings(mlp=0.25, tower="vision"))


def test_pvq_shrink_vision_tower(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("measure.data.text.calibration_text", lambda: "A short calibration text. " * 20)
    source = save_tiny_model("llava", tmp_path / "tiny")
    out = tmp_path / "shrunk"
    args = ["shrink", "--model", str(source), "--tower", "vision", "--mlp", "0.5", "--score", "magnitude",
            "--no-refit", "--out", str(out), "--sequences", "2", "--seq-len", "16"]  # fmt: skip
    assert main(args) == 0
    assert AutoModelForImageTextToText.from_pretrained(out).config.vision_config.intermediate_size == 16
