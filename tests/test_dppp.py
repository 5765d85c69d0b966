"""DPPP stage 2: prompt tokens, the disentanglement losses on hand-made cases, the text
encoder's pseudo-word slots, and one short training step on a tiny prompt-generated site."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedreid.config import load_config
from fedreid.data.augment import normalize
from fedreid.data.prompt_tokens import (
    CONTENT_SLOT,
    content_words,
    prompt_content,
    prompt_style,
    token_ids,
    vocabulary_words,
)
from fedreid.data.records import DataError, Sample
from fedreid.data.split_images import load_split_images
from fedreid.data.store import ImageStore
from fedreid.data.synth import generate_from_prompts, random_prompts
from fedreid.methods import MethodSetup, get_method
from fedreid.methods.dppp import label_contrast, orthogonality
from fedreid.models.text_encoder import PromptTextEncoder
from fedreid.training import LocalTrainer

PROMPT = ("red t-shirt with white stripes, blue jeans, black backpack, no hat, long blonde hair, "
          "fair skin, slim tall build, dim warm light, front and side views, street background")


@pytest.fixture(scope="module")
def prompt_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen") / "gen"
    generate_from_prompts(random_prompts(8, 3), root, seed=3, size=(32, 16), images_per_identity=4,
                          cameras=2, workers=1)
    return load_split_images(root, "fedreid", (32, 16))


def cfg_for(*extra):
    torch.set_num_threads(1)
    return load_config(["method.name=dppp", "device=cpu", "train.batch_size=8", "train.num_instances=2",
                        "data.height=32", "data.width=16", "model.arch=vit_tiny_p8", "model.vit_depth=1",
                        "method.dppp.word_dim=32", "method.dppp.joint_dim=32", "method.dppp.text_depth=1",
                        "eval.batch_size=64", *extra])


# ---- prompt tokens ------------------------------------------------------------------------
def test_content_words_drop_style_and_fillers():
    words = content_words(PROMPT)
    assert words[:6] == ["red", "t-shirt", "white", "stripes", "blue", "jeans"]
    assert not {"dim", "warm", "light", "front", "side", "views", "street", "background", "with"} & set(words)
    assert "<unk>" not in [vocabulary_words()[i] for i in token_ids(words)]
    assert token_ids(["martian"]) == [vocabulary_words().index("<unk>")]


def test_prompt_fields_from_sample_meta_and_missing_prompt():
    style = {"light": "dim", "cast": "warm", "viewpoint": "side", "background": "street"}
    samples = [Sample("a.jpg", 1, 0, meta={"prompt": PROMPT, "style": style}),
               Sample("b.jpg", 2, 1, meta={"prompt": "green coat", "style": style})]
    content = prompt_content(samples)
    assert content.shape[0] == 2 and content[1, 2:].sum() == 0  # "green coat" then padding
    assert [vocabulary_words()[i] for i in content[1, :2]] == ["green", "coat"]
    assert [vocabulary_words()[i] for i in prompt_style(samples)[0]] == ["dim", "warm", "side", "street"]
    with pytest.raises(DataError, match=r"plain\.jpg.*'prompt'.*fedreid data generate"):
        prompt_content([Sample("plain.jpg", 1, 0)])


# ---- the disentanglement losses on hand-made cases ---------------------------------------------
def test_label_contrast_is_low_when_aligned_and_high_when_shuffled():
    a = torch.eye(4)
    labels = torch.arange(4)
    aligned = label_contrast(a, a, labels, labels, temperature=0.05)
    shuffled = label_contrast(a, a[[1, 0, 3, 2]], labels, labels, temperature=0.05)
    assert aligned < 1e-6 and shuffled > 10
    # one label for every row: every pair is a positive, nothing to contrast
    assert label_contrast(a, a[[1, 0, 3, 2]], torch.zeros(4), torch.zeros(4), 0.05) == pytest.approx(0.0, abs=1e-6)
    # a row whose label is absent on the other side is left out, not NaN
    part = label_contrast(a, a[:2], labels, labels[:2], 0.05)
    assert torch.isfinite(part)


def test_content_contrast_prefers_style_free_content_prompts():
    """Two people × two styles. Images mix identity and style; a content prompt that carries
    the identity only scores far better under identity positives than one carrying the style."""
    ident, style = torch.eye(4)[:2], torch.eye(4)[2:]
    pid = torch.tensor([0, 0, 1, 1])
    sty = torch.tensor([0, 1, 0, 1])
    images = F.normalize(ident[pid] + style[sty], dim=1)
    disentangled = F.normalize(ident[pid], dim=1)
    entangled = F.normalize(style[sty], dim=1)
    good = label_contrast(images, disentangled, pid, pid, 0.1)
    bad = label_contrast(images, entangled, pid, pid, 0.1)
    assert good < 0.01 and bad > math.log(2) - 0.01


def test_orthogonality_of_style_and_content_words():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert orthogonality(s, torch.tensor([[0.0, 3.0], [5.0, 0.0]])) == pytest.approx(0.0)
    assert orthogonality(s, -s) == pytest.approx(1.0)


# ---- the text encoder -------------------------------------------------------------------------
def test_text_encoder_slots_padding_and_limits():
    torch.manual_seed(0)
    enc = PromptTextEncoder(len(vocabulary_words()), word_dim=16, depth=1, heads=2, max_len=8, out_dim=8).eval()
    slot = vocabulary_words().index(CONTENT_SLOT)
    ids = torch.tensor([token_ids(["a", "photo", "of", "a", CONTENT_SLOT, "person"])] * 2)
    words = torch.randn(2, 16)
    out = enc(ids, {slot: words})
    assert not torch.allclose(out[0], out[1])  # each row reads its own pseudo-word
    swapped = enc(ids, {slot: words.flip(0)})
    assert torch.allclose(out.flip(0), swapped, atol=1e-5)
    padded = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], 1)
    assert torch.allclose(enc(padded, {slot: words}), out, atol=1e-5)  # padding is ignored
    with pytest.raises(ValueError, match="pseudo-words"):
        enc(ids, {slot: torch.randn(3, 16)})
    with pytest.raises(ValueError, match="max_len=8"):
        enc(torch.ones(1, 9, dtype=torch.long))


# ---- the method ---------------------------------------------------------------------------------
def test_one_training_step_trains_the_encoder_and_the_text_side(prompt_site):
    trainer = LocalTrainer(cfg_for("train.max_batches=1"), prompt_site)
    method = trainer.method
    before_model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before_text = {k: v.clone() for k, v in method.heads["text"].state_dict().items()}
    stats = trainer.train_epochs(1, seed=0)
    for part in ("loss_id", "loss_triplet", "loss_full", "loss_content", "loss_ground", "loss_orth"):
        assert np.isfinite(stats[part]), part
    assert stats["batches"] == 1
    assert any(not torch.equal(before_model[k], v) for k, v in trainer.model.state_dict().items())
    assert any(not torch.equal(before_text[k], v) for k, v in method.heads["text"].state_dict().items())
    # only the image encoder is shared and used at test time
    shared = get_method("dppp").shared_keys(method.options, trainer.model)
    assert shared and all(k.startswith(("backbone.", "neck.")) for k in shared)
    feats = method.embed(prompt_site.query, flip=False)
    trainer.model.eval()
    with torch.no_grad():
        direct = trainer.model(normalize(prompt_site.query.images[:4]))
    assert torch.allclose(feats[:4], direct, atol=1e-4)
    assert trainer.evaluate()["mAP"] >= 0


def test_a_site_without_prompts_is_refused_naming_the_image():
    images = torch.zeros(4, 3, 32, 16, dtype=torch.uint8)
    store = ImageStore.from_tensor(images, np.array([1, 1, 2, 2]), np.array([0, 1, 0, 1]))
    cls = get_method("dppp")
    cfg = cfg_for()
    model = cls.build_model(cfg.method.dppp, cfg.model, (32, 16))
    with pytest.raises(DataError, match=r"memory:0.*fedreid data generate"):
        cls(cfg.method.dppp, model, MethodSetup(train=store, device=torch.device("cpu")))
