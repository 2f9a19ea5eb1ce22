"""The multimodal-LLM encoder on a tiny random Qwen2-VL built and saved in the test.

What this verifies offline: the whole path through a local model folder (AutoProcessor +
AutoModel), the prompt/image batching with images of different sizes, the chosen hidden
layer, the three poolings and the masks. What it cannot: the real Qwen2.5-VL-7B weights,
its chat template and bf16 on a GPU (no hub, no GPU here).
"""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from mmembed.datasets import ItemCatalog
from mmembed.encoders import create_encoder
from mmembed.weights import WeightsNotAvailable

from _tiny_models import build_tiny_qwen2vl

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny_qwen2vl")))


def mllm_records(tmp_path):
    """Covers of different sizes (different image token counts); item 3 has no cover."""
    rng = np.random.RandomState(1)
    sizes = [(56, 56), (90, 120), None, (30, 70), (112, 112)]
    records = []
    for i, size in enumerate(sizes):
        image = None
        if size is not None:
            image = str(tmp_path / f"{i + 1}.png")
            Image.fromarray(rng.randint(0, 255, (*size, 3), dtype=np.uint8)).save(image)
        records.append({"title": f"video number {i}", "tags": [1, 2] if i % 2 else [], "image": image})
    return records


@pytest.fixture
def catalog(tmp_path):
    return ItemCatalog.from_records(mllm_records(tmp_path))


def _manual(model_dir, catalog, pos, layer, pooling):
    """The pooled vector for one item computed straight from transformers."""
    import torch
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    tags = " ".join(f"tag_{t}" for t in catalog.tags[pos] if t) or "none"
    from mmembed.encoders.mllm import DEFAULT_PROMPT

    text = "<|vision_start|><|image_pad|><|vision_end|>" + DEFAULT_PROMPT.format(title=catalog.titles[pos], tags=tags)
    inputs = processor(text=[text], images=[catalog.load_image(pos)], return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[layer][0]
    is_image = inputs["input_ids"][0] == model.config.image_token_id
    keep = {"all": torch.ones_like(is_image), "image": is_image, "text": ~is_image}[pooling]
    pooled = hidden[keep].mean(dim=0)
    return (pooled / pooled.norm()).numpy(), int(is_image.sum())


def test_matches_manual_transformers_computation(tiny_qwen, catalog):
    feats = create_encoder({"name": "mllm", "model": tiny_qwen}).encode(catalog, batch_size=3, progress=False, num_workers=0)
    assert feats.vectors.shape == (5, 32) and feats.vectors.dtype == np.float32
    assert feats.valid.tolist() == [True, True, False, True, True]
    assert not feats.vectors[2].any()
    assert feats.info["dtype"] == "float32" and feats.info["n_items_with_image"] == 4
    for pos in (0, 1, 4):
        expected, n_image_tokens = _manual(tiny_qwen, catalog, pos, -2, "all")
        np.testing.assert_allclose(feats.vectors[pos], expected, atol=1e-5)
    assert n_image_tokens == 16  # 112x112 -> 8x8 patches -> 16 merged tokens


@pytest.mark.parametrize("pooling", ["image", "text"])
def test_pooling_over_image_or_text_tokens(tiny_qwen, catalog, pooling):
    enc = create_encoder({"name": "mllm", "model": tiny_qwen, "pooling": pooling, "layer": -1})
    feats = enc.encode(catalog, batch_size=5, progress=False, num_workers=0)
    expected, _ = _manual(tiny_qwen, catalog, 1, -1, pooling)
    np.testing.assert_allclose(feats.vectors[1], expected, atol=1e-5)


def test_batch_size_and_workers_do_not_change_vectors(tiny_qwen, catalog):
    enc = create_encoder({"name": "mllm", "model": tiny_qwen})
    one = enc.encode(catalog, batch_size=1, progress=False, num_workers=0)
    many = enc.encode(catalog, batch_size=5, progress=False, num_workers=2)
    np.testing.assert_array_equal(one.valid, many.valid)
    np.testing.assert_allclose(one.vectors, many.vectors, atol=1e-5)


def test_require_any_encodes_text_only_items(tiny_qwen, catalog):
    feats = create_encoder({"name": "mllm", "model": tiny_qwen, "require": "any"}).encode(catalog, progress=False, num_workers=0)
    assert feats.valid.all() and feats.vectors[2].any()
    with pytest.raises(ValueError, match="pooling='image' needs a cover for every item; use require='all'"):
        create_encoder({"name": "mllm", "model": tiny_qwen, "require": "any", "pooling": "image"})


def test_options_and_weights_errors(tiny_qwen, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"layer=-4 is out of range for 2 layers: valid are -3..2"):
        create_encoder({"name": "mllm", "model": tiny_qwen, "layer": -4})
    with pytest.raises(ValueError, match="prompt must be a string containing '{title}'"):
        create_encoder({"name": "mllm", "model": tiny_qwen, "prompt": "no placeholder"})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailable, match=r"'Qwen/Qwen2.5-VL-7B-Instruct'.*`hf download Qwen/Qwen2.5-VL-7B-Instruct`"):
        create_encoder("mllm")


def test_checkpoint_missing_weights_is_an_error_not_random(tiny_qwen, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen, broken)
    state = load_file(broken / "model.safetensors")
    dropped = next(k for k in state if "layers.1.mlp" in k)
    del state[dropped]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    enc = create_encoder({"name": "mllm", "model": str(broken)})  # config is fine: fails at load
    with pytest.raises(ValueError, match=r"1 weights missing from the checkpoint"):
        enc.load()


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_chat_template_is_used_when_the_processor_has_one(tiny_qwen, catalog, tmp_path):
    import shutil

    import torch
    from transformers import AutoModel, AutoProcessor

    from mmembed.encoders.mllm import DEFAULT_PROMPT

    folder = tmp_path / "with_template"
    shutil.copytree(tiny_qwen, folder)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor = AutoProcessor.from_pretrained(folder)
    assert processor.chat_template
    feats = create_encoder({"name": "mllm", "model": str(folder)}).encode(catalog, progress=False, num_workers=0)

    prompt = DEFAULT_PROMPT.format(title=catalog.titles[0], tags="none")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        tokenize=False, add_generation_prompt=True,
    )
    assert text.startswith("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Title:")
    inputs = processor(text=[text], images=[catalog.load_image(0)], return_tensors="pt")
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        pooled = model(**inputs, output_hidden_states=True).hidden_states[-2][0].mean(dim=0)
    np.testing.assert_allclose(feats.vectors[0], (pooled / pooled.norm()).numpy(), atol=1e-5)

    plain = create_encoder({"name": "mllm", "model": str(folder), "use_chat_template": False})
    assert np.abs(plain.encode(catalog, progress=False, num_workers=0).vectors[0] - feats.vectors[0]).max() > 1e-4


def test_bfloat16_on_request(tiny_qwen, catalog):
    fp32 = create_encoder({"name": "mllm", "model": tiny_qwen})
    assert fp32.config()["dtype"] == "float32"  # "auto" resolved on this CPU machine
    bf16 = create_encoder({"name": "mllm", "model": tiny_qwen, "dtype": "bfloat16"})
    a = fp32.encode(catalog, progress=False, num_workers=0)
    b = bf16.encode(catalog, progress=False, num_workers=0)
    assert b.vectors.dtype == np.float32 and b.info["dtype"] == "bfloat16"
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_allclose(a.vectors, b.vectors, atol=0.1)
