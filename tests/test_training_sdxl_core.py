"""The SDXL seams of the training core without a diffusion model: size conditioning, micro-batching, run identity.

The backend here is a stand-in of the real one's structure (docs/sdxl.md section 3.2): a text
path that writes S* of both towers into a prompt's context, a pooled vector, and a "UNet" whose
output depends on the noisy latent, the context, the pooled vector and the size conditioning.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from f2d_core.errors import F2DError
from f2d_core.identity.mapper import F2DMapper
from f2d_core.identity.mapper_xl import F2DMapperXL
from f2d_core.training.backend import TextCond
from f2d_core.training.data.dataset import TrainingSet
from f2d_core.training.data.report import DatasetReport
from f2d_core.training.losses import anchor_regularisation
from f2d_core.training.run_identity import RunIdentity
from f2d_core.training.size_conditioning import size_ids
from f2d_core.training.trainer import MapperTrainer, TrainSettings, sample_batch


class TwoHeads(nn.Module):
    """A stand-in two-head mapper: the SD1 mapper's S* for "l", a linear widening of it for "g"."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.g = F2DMapper(), nn.Linear(768, 1280)

    def forward(self, idvec, expression=None, keep=None):
        s = self.inner(idvec, expression, keep)
        return {"l": s, "g": self.g(s)}


class StandInBackend:
    """Differentiable stand-in of an SD1 or SDXL backend (fp32, CPU)."""

    device = torch.device("cpu")
    training_dtype = torch.float32

    def __init__(self, family: str) -> None:
        self.family = family
        g = torch.Generator().manual_seed(1)
        width = 2048 if family == "sdxl" else 768
        self.tokens = torch.randn(77, width, generator=g)
        self.read = torch.randn(width, 4, generator=g) / width**0.5
        self.pool = torch.randn(width, 1280, generator=g) / width**0.5
        self.size = torch.randn(6, 4, generator=g) / 1000

    def text_context(self, prompt, s_star=None, pooled=False) -> TextCond:
        x = self.tokens[None].clone()
        if s_star is not None:
            words = s_star if self.family == "sd1" else torch.cat([s_star["l"], s_star["g"]], dim=-1)
            x = x.expand(words.shape[0], -1, -1).clone()
            x[:, 4:6] = words
        x = torch.tanh(x)
        return TextCond(x, x.mean(dim=1) @ self.pool if self.family == "sdxl" and pooled else None)

    def noisy_latents(self, latents, noise, timesteps):
        return latents + noise * (timesteps[:, None, None, None] / 1000)

    def predict_noise(self, noisy, timesteps, cond, size_ids=None):
        bias = cond.context.mean(dim=1) @ self.read  # [B, 4]
        if self.family == "sdxl":
            bias = bias + cond.pooled[:, :4] + size_ids @ self.size
        return noisy * torch.tanh(bias)[:, :, None, None]

    def frozen_fingerprint(self) -> str:
        return "stand-in"


def _data(n: int = 6, side: int = 8) -> TrainingSet:
    g = torch.Generator().manual_seed(0)
    return TrainingSet(
        idvec=torch.randn(n, 2, 1536, generator=g),
        expression=torch.randn(n, 2, 64, generator=g),
        latents=torch.randn(n, 2, 4, side, side, generator=g).half(),
        masks=(torch.rand(n, 2, 1, side, side, generator=g) > 0.5).to(torch.uint8),
        person=[""] * n,
        files=[f"{i}.png" for i in range(n)],
        report=DatasetReport(folder="x"),
        source_side=torch.linspace(150, 5000, n)[:, None].expand(n, 2).clone(),
    )


def test_size_ids_are_encode_adms_order_with_the_source_side_clamped():
    ids = size_ids(torch.tensor([100.0, 700.4, 9000.0]), 1024, "source")
    assert ids.tolist() == [
        [256, 256, 0, 0, 1024, 1024],
        [700, 700, 0, 0, 1024, 1024],
        [4096, 4096, 0, 0, 1024, 1024],
    ]
    assert size_ids(torch.tensor([700.0]), 768, "target").tolist() == [[768, 768, 0, 0, 768, 768]]
    with pytest.raises(F2DError, match="size_conditioning must be one of"):
        size_ids(torch.tensor([700.0]), 768, "crop")


def test_a_batch_carries_each_samples_size_conditioning():
    data = _data()
    batch = sample_batch(data, TrainSettings(batch_size=4, seed=2), 5)
    assert batch.size_ids.shape == (4, 6) and (batch.size_ids[:, 4:] == 64).all()
    sides = {round(v) for v in data.source_side[:, 0].tolist()}
    assert {int(v) for v in batch.size_ids[:, 0].tolist()} <= {min(max(s, 256), 4096) for s in sides}


@pytest.mark.parametrize(
    ("family", "pooled_source"), [("sd1", "class_prompt"), ("sdxl", "class_prompt"), ("sdxl", "identity_prompt")]
)
def test_micro_batches_equal_one_batch(family, pooled_source, tmp_path):
    """U9: the gradient of batch 4 equals the accumulated gradients of micro-batches 2 + 2 (and 1 x 4), in training
    mode: each sample's dropout mask comes from its own seed, whichever micro-batch it falls in."""
    grads, losses = {}, {}
    for micro in (0, 2, 1):
        torch.manual_seed(0)
        mapper = TwoHeads() if family == "sdxl" else F2DMapper()
        mapper.train()
        settings = TrainSettings(batch_size=4, micro_batch=micro, pooled_source=pooled_source)
        trainer = MapperTrainer(mapper, StandInBackend(family), _data(), settings, tmp_path / str(micro))
        class_cond = trainer.backend.text_context(settings.class_prompt, pooled=True)
        loss, norm = trainer.gradients(3, class_cond)
        assert norm is not None and norm > 0
        grads[micro] = torch.cat([p.grad.flatten() for p in mapper.parameters() if p.grad is not None])
        losses[micro] = loss.item()
    for micro in (2, 1):
        assert losses[micro] == pytest.approx(losses[0], rel=1e-6)
        torch.testing.assert_close(grads[micro], grads[0], rtol=1e-5, atol=1e-9)


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(F2DError, match="micro_batch 3 must divide the batch of 8"):
        TrainSettings(batch_size=8, micro_batch=3)
    with pytest.raises(F2DError, match="pooled_source must be one of"):
        TrainSettings(pooled_source="both")


def test_the_pooled_source_follows_the_setting(tmp_path):
    """class_prompt: the identity branch's pooled vector is the class prompt's; identity_prompt: the S* prompt's."""
    seen = {}
    for source in ("class_prompt", "identity_prompt"):
        backend = StandInBackend("sdxl")
        calls = []
        predict = backend.predict_noise
        backend.predict_noise = lambda n, t, cond, s=None, calls=calls, predict=predict: (
            calls.append(cond.pooled.detach().clone()) or predict(n, t, cond, s)
        )
        trainer = MapperTrainer(
            TwoHeads().eval(), backend, _data(), TrainSettings(batch_size=2, pooled_source=source), tmp_path
        )
        class_cond = backend.text_context("A photo of a person", pooled=True)
        trainer.gradients(0, class_cond)
        class_branch, identity_branch = calls
        assert torch.equal(class_branch, class_cond.pooled.expand(2, -1))
        seen[source] = identity_branch
    assert torch.equal(seen["class_prompt"], seen["identity_prompt"]) is False
    assert torch.equal(seen["class_prompt"][0], StandInBackend("sdxl").text_context("x", pooled=True).pooled[0])


def test_family_and_pooled_source_are_part_of_the_run_identity():
    base = dict(dataset="d" * 64, start_mapper="m" * 64, loss="cgdr", global_batch_size=8, seed=0, world_size=1)
    sd1, sdxl = RunIdentity(**base), RunIdentity(**base, family="sdxl", pooled_source="class_prompt")
    assert sdxl.differences(sd1) == [
        "model family (saved run: sd1, now: sdxl)",
        "pooled_source (saved run: , now: class_prompt)",
    ]
    old = '{"dataset": "%s", "global_batch_size": 8, "loss": "cgdr", "seed": 0, "start_mapper": "%s", "world_size": 1}'
    assert RunIdentity.from_json(old % ("d" * 64, "m" * 64)) == sd1  # a state saved before SDXL: an SD1 run


BUILDER, TRAIN_NODE, START = (
    "f2d_core/training/data/builder.py",
    "nodes/training/train_node.py",
    "nodes/training/starting_mapper.py",
)
SDXL_BACKEND, SD1_BACKEND = "nodes/training/comfy_backend_sdxl.py", "nodes/training/comfy_backend.py"
SDXL_TRAINING_MESSAGES = [  # (quoted in docs/troubleshooting.md, what the code says, where)
    ("The VAE produced NaN or infinite latents (an SDXL VAE running in fp16 overflows)", None, BUILDER),
    ("This training set was made with another VAE", None, TRAIN_NODE),
    ("The starting mapper is for SD1.x but the MODEL to train is SDXL", "but the MODEL to train is", START),
    ("This MODEL is the SDXL refiner", None, SDXL_BACKEND),
    ("Mapper training needs an eps-prediction SDXL model", "needs an eps-prediction {family} model", SD1_BACKEND),
    ("The MODEL is SDXL but the CLIP is", None, SDXL_BACKEND),
    ("The CLIP is SDXL's but the MODEL is", None, SDXL_BACKEND),
    ("micro_batch 3 must divide the batch", "must divide the batch of", "f2d_core/training/trainer.py"),
    ("this mapper is for SD1.x and has none", None, "f2d_core/training/trainer.py"),
    ("and this SDXL mapper records none", None, "f2d_core/training/trainer.py"),
    ("anchor_reg must be a finite number >= 0", None, "f2d_core/training/trainer.py"),
    ("checkpoint_granularity must be one of", None, SD1_BACKEND),
    ("--checkpoint-granularity goes with --gradient-checkpointing", None, "cli/train_mapper.py"),
]


def test_troubleshooting_quotes_the_sdxl_training_messages():
    repo = Path(__file__).resolve().parents[1]
    page = re.sub(r"\s+", " ", (repo / "docs" / "troubleshooting.md").read_text())
    for quoted, in_code, source in SDXL_TRAINING_MESSAGES:
        assert quoted in page, quoted
        assert (in_code or quoted) in (repo / source).read_text(), f"{source} no longer says {quoted!r}"


def test_a_step_is_a_function_of_seed_and_step_dropout_included(tmp_path):
    """The mapper's dropout is seeded per step: a resumed run, the node and the CLI repeat a step exactly."""
    grads = []
    for i in range(2):
        torch.manual_seed(0)
        mapper = F2DMapper().train()
        trainer = MapperTrainer(mapper, StandInBackend("sd1"), _data(), TrainSettings(batch_size=2), tmp_path)
        torch.rand(7 + i)  # whatever the global RNG did before differs
        trainer.gradients(4, trainer.backend.text_context("A photo of a person"))
        grads.append(torch.cat([p.grad.flatten() for p in mapper.parameters() if p.grad is not None]))
    assert torch.equal(grads[0], grads[1])


# ---- anchor_reg (docs/sdxl.md 2.3: lambda * mean_k ||S*_t[k] - A_t[k]||^2, Cross-Init's regulariser) ----------


def test_anchor_regularisation_is_the_formula_on_a_hand_computed_case():
    s_star = {"l": torch.tensor([[[1.0, 2.0], [0.0, 0.0]]]), "g": torch.tensor([[[1.0], [1.0]]])}
    anchors = {"l": torch.tensor([[0.0, 0.0], [0.0, 1.0]]), "g": torch.tensor([[1.0], [3.0]])}
    # l: ||(1, 2)||^2 = 5, ||(0, -1)||^2 = 1 -> mean 3; g: 0 and 4 -> mean 2; summed over the towers: 5
    assert anchor_regularisation(s_star, anchors).item() == 5.0
    # a second sample, S* + 1: l ||(2, 3)||^2 = 13, ||(1, 0)||^2 = 1 -> 7; g 1 and 1 -> 1; 8 in all; mean over samples
    two = {t: torch.cat([v, v + 1]) for t, v in s_star.items()}
    assert anchor_regularisation(two, anchors).item() == (5.0 + 8.0) / 2


def _anchored_mapper(seed: int = 0) -> F2DMapperXL:
    torch.manual_seed(seed)
    mapper = F2DMapperXL()
    g = torch.Generator().manual_seed(seed + 1)
    mapper.init_from_anchors({t: torch.randn(2, w, generator=g) for t, w in mapper.widths.items()})
    return mapper


def test_anchor_reg_adds_lambda_times_the_distance_to_the_anchors_to_the_loss(tmp_path):
    mapper = _anchored_mapper().eval()
    data, losses = _data(), {}
    for reg in (0.0, 0.5):
        settings = TrainSettings(batch_size=2, anchor_reg=reg, micro_batch=1)
        trainer = MapperTrainer(mapper, StandInBackend("sdxl"), data, settings, tmp_path)
        class_cond = trainer.backend.text_context(settings.class_prompt, pooled=True)
        batch = sample_batch(data, settings, 3)
        with torch.no_grad():
            losses[reg] = trainer.step_loss(batch, class_cond, torch.Generator().manual_seed(5)).item()
            s_star = mapper(batch.idvec, batch.expression, batch.keep_expression)
    anchors = {t: getattr(mapper.anchor, t) for t in ("l", "g")}
    expected = sum(((s_star[t] - anchors[t]).square().sum(-1).mean() for t in anchors), torch.tensor(0.0))
    assert expected.item() > 0
    assert losses[0.5] - losses[0.0] == pytest.approx(0.5 * expected.item(), rel=1e-5)


def test_anchor_reg_keeps_s_star_nearer_the_anchor(tmp_path):
    """A few steps with lambda > 0 leave S* nearer its anchors than the same steps with lambda = 0."""
    data, distance = _data(), {}
    for reg in (0.0, 1.0):
        mapper = _anchored_mapper()
        settings = TrainSettings(batch_size=2, learning_rate=1e-3, anchor_reg=reg)
        trainer = MapperTrainer(mapper, StandInBackend("sdxl"), data, settings, tmp_path / str(reg))
        class_cond = trainer.backend.text_context(settings.class_prompt, pooled=True)
        for step in range(4):
            assert trainer._train_step(step, class_cond) is not None
        mapper.eval()
        with torch.no_grad():
            s_star = mapper(data.idvec[:, 0], data.expression[:, 0])
        anchors = {t: getattr(mapper.anchor, t) for t in ("l", "g")}
        distance[reg] = anchor_regularisation(s_star, anchors).item()
    assert distance[1.0] < 0.5 * distance[0.0], distance


def test_anchor_reg_is_refused_without_anchors_and_recorded_with_the_run(tmp_path, caplog):
    data = _data()
    with pytest.raises(F2DError, match=r"this mapper is for SD1\.x and has none"):
        MapperTrainer(F2DMapper(), StandInBackend("sd1"), data, TrainSettings(anchor_reg=0.1), tmp_path)
    with pytest.raises(F2DError, match="and this SDXL mapper records none"):
        MapperTrainer(F2DMapperXL(), StandInBackend("sdxl"), data, TrainSettings(anchor_reg=0.1), tmp_path)
    with pytest.raises(F2DError, match="anchor_reg must be a finite number >= 0"):
        TrainSettings(anchor_reg=-1.0)
    MapperTrainer(F2DMapper(), StandInBackend("sd1"), data, TrainSettings(anchor_reg=0.0), tmp_path)  # off: fine
    run = tmp_path / "run"
    first = TrainSettings(steps=1, batch_size=2, anchor_reg=0.1, checkpoint_every=1)
    MapperTrainer(_anchored_mapper(), StandInBackend("sdxl"), data, first, run).run()
    with caplog.at_level("INFO"):
        second = TrainSettings(steps=2, batch_size=2, anchor_reg=0.3, checkpoint_every=1)
        result = MapperTrainer(_anchored_mapper(), StandInBackend("sdxl"), data, second, run).run()
    assert result.step == 2  # a hyper-parameter like weight_decay (a regulariser too): resumed, the new value used
    assert "anchor_reg: 0.3 (the saved run used 0.1); the new value is used" in caplog.text
