"""MSID training at tiny width on the CPU: the loss falls, verification improves, resume is exact.

Faces have no labelled identity set offline: the identities are tests/support/identity_sets.py's (the
real faces packages ship, re-aligned with augmentation, plus synthetic ones). Held-out pairs are other
photos of those identities (another seed's augmentation), scored by the cosine of the embedding the
loss trains (MSID: all taps concatenated; plain ArcFace: the last tap).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.msid_training.encoder_init import EncoderInit, initial_encoder, timm_to_msid
from f2d_core.msid_training.encoder_output import save_trained_encoder
from f2d_core.msid_training.run_state import MSIDRunMismatch
from f2d_core.msid_training.schedule import learning_rate
from f2d_core.msid_training.trainer import MSIDTrainer, MSIDTrainSettings, to_encoder_input
from f2d_core.msid_training.verification.metrics import verification_metrics
from f2d_core.weight_files import read_weights
from tests.support.identity_sets import identity_set, verification_pairs

TINY = {"width": 32, "depth": 4, "heads": 2, "tap_blocks": (0, 1, 2, 3)}
BATCH = 32
TRAIN_STEPS = 60  # 15 epochs of the 128 photos


@pytest.fixture(autouse=True)
def one_thread():
    """Matrices this small run faster on one thread than on several competing for shared cores (3x in CI)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def faces():
    """(training photos: 16 identities x 8, held-out photos of the same identities: 16 x 4)."""
    return identity_set(8, 8, seed=0), identity_set(4, 8, seed=1)


def shuffled_batches(data, batch_size: int, seed: int = 0):
    """A deterministic loader: epoch e is a seeded permutation, cut into full batches from `first` on."""

    def batches(epoch: int, first: int):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for k in range(first, len(data) // batch_size):
            index = order[k * batch_size : (k + 1) * batch_size]
            yield data.images[index], data.labels[index]

    return batches


def held_out_auc(encoder: MSIDEncoder, held, loss: str) -> float:
    encoder.eval()
    with torch.no_grad():
        embeddings = encoder(to_encoder_input(held.images, None))
    encoder.train()
    if loss == "plain_arcface":
        embeddings = embeddings[:, -encoder.embed_dim :]
    first, second, same = verification_pairs(held, 200, seed=2)
    return verification_metrics(F.cosine_similarity(embeddings[first], embeddings[second]), same).auc


def _trainer(data, run_dir, seed_encoder: int = 0, **settings) -> MSIDTrainer:
    torch.manual_seed(seed_encoder)
    encoder = MSIDEncoder(**TINY)
    defaults = {"epochs": 100, "batch_size": BATCH, "warmup_fraction": 0.02, "checkpoint_every": 1000}
    return MSIDTrainer(
        encoder,
        data,
        shuffled_batches(data, BATCH),
        MSIDTrainSettings(**{**defaults, **settings}),
        run_dir,
        init_digest=f"random:seed={seed_encoder}",
    )


@pytest.mark.parametrize("loss", ["msid", "plain_arcface"])
def test_training_lowers_the_loss_and_raises_held_out_auc(faces, tmp_path, loss):
    train, held = faces
    trainer = _trainer(train, tmp_path, loss=loss, max_steps=TRAIN_STEPS)
    untrained_auc = held_out_auc(trainer.encoder, held, loss)
    result = trainer.run()
    assert result.step == TRAIN_STEPS and len(result.losses) == TRAIN_STEPS and result.status == "stopped"
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    trained_auc = held_out_auc(trainer.encoder, held, loss)
    assert trained_auc > untrained_auc + 0.02, (untrained_auc, trained_auc)
    # The plain baseline trains the last tap only: the shallow norms keep their initial affine.
    shallow = trainer.encoder.norms["layer_0"][1].weight
    assert torch.equal(shallow, torch.ones_like(shallow)) == (loss == "plain_arcface")

    out_path = tmp_path / "msid_tiny.safetensors"
    out = save_trained_encoder(out_path, trainer.encoder, result, trainer.settings, train, "x")
    tensors, metadata = read_weights(out)
    assert set(tensors) == {f"msid.{k}" for k in trainer.encoder.state_dict()}
    assert metadata["contents"] == "msid" and metadata["trained_steps"] == str(TRAIN_STEPS)
    assert metadata["loss"].startswith(loss)


def test_resumed_run_repeats_the_uninterrupted_losses(faces, tmp_path):
    """Stopped at step 7 (mid-epoch, past a checkpoint at 5) and resumed: the same 12 losses, bit for bit."""
    train, _ = faces
    settings = {"epochs": 3, "checkpoint_every": 5, "partial_fc": 0.5}
    whole = _trainer(train, tmp_path / "whole", **settings).run()
    assert whole.status == "completed" and len(whole.losses) == 12
    part = _trainer(train, tmp_path / "parts", max_steps=7, **settings).run()
    assert part.step == 7 and part.status == "stopped"
    rest = _trainer(train, tmp_path / "parts", **settings).run()
    assert rest.step == 12 and rest.status == "completed"
    assert rest.losses == whole.losses
    again = _trainer(train, tmp_path / "parts", **settings).run()
    assert again.status == "nothing_to_train"


def test_resume_with_another_run_identity_is_refused(faces, tmp_path):
    train, _ = faces
    _trainer(train, tmp_path, epochs=1).run()
    with pytest.raises(MSIDRunMismatch, match="loss"):
        _trainer(train, tmp_path, epochs=1, loss="plain_arcface").run()
    with pytest.raises(MSIDRunMismatch, match="starting weights"):
        _trainer(train, tmp_path, seed_encoder=1, epochs=1).run()


def test_schedule_warms_up_then_decays_linearly_to_zero():
    rates = [learning_rate(s, 100, 10, 1e-3) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert rates[10] == pytest.approx(1e-3) and rates[55] == pytest.approx(0.5e-3) and rates[-1] > 0
    assert learning_rate(100, 100, 10, 1e-3) == 0


def test_timm_vit_checkpoint_starts_the_encoder(tmp_path):
    """A timm ViT-S/16 state dict (patch 16, 14x14 grid, a head): blocks copied, kernel and grid resampled."""
    import timm
    from safetensors.torch import save_file

    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=10, img_size=160)
    path = tmp_path / "vit_s16.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    encoder = initial_encoder(EncoderInit.parse(f"timm:{path}"))
    torch.testing.assert_close(encoder.blocks[7].mlp.fc1.weight, vit.blocks[7].mlp.fc1.weight)
    assert encoder.patch_embed.proj.weight.shape == (384, 3, 8, 8)
    assert encoder.pos_embed.shape == (1, 197, 384)
    torch.testing.assert_close(encoder.pos_embed[:, :1], vit.pos_embed[:, :1])  # the class token's own
    wrong = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    with pytest.raises(Exception, match="not a timm VisionTransformer"):
        timm_to_msid(wrong, MSIDEncoder(), path)


def ddp_rank(rank: int, world_size: int, run_dir: str) -> dict:
    """One rank of a 2-process run (run_on_ranks): DDP encoder, sharded centres, this rank's half of each
    batch; stopped at step 3, then resumed by a new trainer to the end (step 6)."""
    torch.set_num_threads(1)
    train = identity_set(4, 8, seed=0)  # 64 photos: 2 steps of 32 per epoch
    whole = shuffled_batches(train, BATCH)
    half = BATCH // world_size

    def batches(epoch: int, first: int):
        for images, labels in whole(epoch, first):
            yield images[rank * half : (rank + 1) * half], labels[rank * half : (rank + 1) * half]

    def session(max_steps: int | None) -> MSIDTrainer:
        torch.manual_seed(0)
        settings = MSIDTrainSettings(
            epochs=3, batch_size=BATCH, checkpoint_every=2, max_steps=max_steps, partial_fc=0.5
        )
        return MSIDTrainer(
            MSIDEncoder(**TINY), train, batches, settings, run_dir, init_digest="r", rank=rank, world_size=world_size
        )

    first = session(3).run()
    torch.distributed.barrier()  # every rank has deleted its older shard before rank 0 lists them
    shards = sorted(p.name for p in Path(run_dir).glob("classifier_rank*"))
    trainer = session(None)
    rest = trainer.run()
    return {
        "steps": torch.tensor([first.step, rest.step]),
        "first_losses": torch.tensor(first.losses),
        "losses": torch.tensor(rest.losses),
        "shards_at_3": shards,
        "qkv": trainer.encoder.blocks[0].attn.qkv.weight.detach(),
        "centres": trainer.classifier.weight.detach(),
    }


def test_two_gloo_ranks_train_one_encoder_and_resume(tmp_path):
    """2 processes: the same global loss on both, identical encoders, their own centre shards, a resumable state."""
    from tests.support.sharded_ranks import run_on_ranks

    ranks = run_on_ranks(ddp_rank, 2, tmp_path / "ranks", str(tmp_path / "run"))
    assert all(r["steps"].tolist() == [3, 6] for r in ranks)
    assert ranks[0]["shards_at_3"] == ["classifier_rank0_step3.safetensors", "classifier_rank1_step3.safetensors"]
    torch.testing.assert_close(ranks[0]["losses"], ranks[1]["losses"])
    torch.testing.assert_close(ranks[0]["losses"][:3], ranks[0]["first_losses"])
    assert torch.equal(ranks[0]["qkv"], ranks[1]["qkv"])
    assert ranks[0]["centres"].shape == (8, 32 * 4) and ranks[1]["centres"].shape == (8, 32 * 4)


def test_every_cli_option_has_help_and_the_paper_defaults():
    from cli.train_msid import build_parser

    parser = build_parser()
    undocumented = [a.option_strings for a in parser._actions if a.option_strings != ["-h", "--help"] and not a.help]
    assert not undocumented
    args = parser.parse_args(["--data", "d", "--out", "o.safetensors", "--run-dir", "r"])
    paper = (30, 1024, 1e-3, "msid", 0.5, 64)
    assert (args.epochs, args.batch_size, args.lr, args.loss, args.margin, args.scale) == paper


def test_msid_checkpoint_starts_a_fine_tune_and_bad_inits_are_named(official_checkpoints, tmp_path):
    msid_path, _ = official_checkpoints
    init = EncoderInit.parse(f"msid:{msid_path}")
    encoder = initial_encoder(init)
    assert encoder.training and init.digest(0).startswith("msid:")
    official = MSIDEncoder()
    official.load_state_dict(read_weights(msid_path)[0])
    torch.testing.assert_close(encoder.state_dict(), official.state_dict())
    assert EncoderInit.parse("random").digest(3) == "random:seed=3"
    for bad in ("imagenet", "timm:", f"msid:{tmp_path / 'missing.pt'}", "random:x"):
        with pytest.raises(Exception, match="--init"):
            EncoderInit.parse(bad)


def test_a_stop_request_saves_the_state_and_the_run_continues_from_it(faces, tmp_path):
    """What Ctrl-C / SIGTERM do in the CLI (StopRequest): stop after the current step, save, resume there."""
    train, _ = faces
    asked = iter([False, True])
    stopped = _trainer(train, tmp_path, epochs=1, stop_check_every=1).run(should_stop=lambda: next(asked))
    assert stopped.status == "stopped" and stopped.step == 2 and len(stopped.losses) == 2
    rest = _trainer(train, tmp_path, epochs=1).run()
    assert rest.step == 4 and rest.losses[:2] == stopped.losses


def test_the_stop_request_is_asked_every_n_steps_only(faces, tmp_path):
    """Issue 18: with several ranks asking is an all-reduce and a host sync, so not every step."""
    train, _ = faces
    asked = []
    result = _trainer(train, tmp_path, epochs=3, stop_check_every=5).run(should_stop=lambda: asked.append(1) or False)
    assert result.step == 12 and len(asked) == 2  # steps 5 and 10


def _saved_by(run_dir, world_size: int, classes: int = 13, dim: int = 6):
    """A state saved by `world_size` ranks (written one rank after another here: no process group needed),
    the classifier's full centres and AdamW moments [classes, dim]."""
    from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
    from f2d_core.msid_training.run_state import MSIDRunIdentity, save_run_state

    encoder = torch.nn.Linear(dim, dim)
    identity = MSIDRunIdentity("d", "i", "msid", 8, 0, world_size, "tiny")
    full = {"weight": [], "exp_avg": [], "exp_avg_sq": []}
    for rank in reversed(range(world_size)):  # rank 0 last: it writes the main state after every shard
        head = ShardedMarginSoftmax(classes, dim, rank=rank, world_size=world_size, seed=rank)
        optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()])
        head.weight.grad = torch.randn_like(head.weight)
        encoder.weight.grad, encoder.bias.grad = torch.ones_like(encoder.weight), torch.ones_like(encoder.bias)
        optimizer.step()
        save_run_state(run_dir, 5, encoder, head, optimizer, [1.0] * 5, {}, identity, rank)
        state = optimizer.state[head.weight]
        for key, value in (("weight", head.weight), ("exp_avg", state["exp_avg"]), ("exp_avg_sq", state["exp_avg_sq"])):
            full[key].insert(0, value.detach().clone())
    return {k: torch.cat(v) for k, v in full.items()}


@pytest.mark.parametrize("new_world", [1, 2, 8])
def test_a_state_saved_by_4_ranks_resumes_resharded_on_another_number(tmp_path, new_world):
    """Issue 18: each new rank reads its rows of the centres and their moments from the 4 old shards."""
    from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
    from f2d_core.msid_training.run_state import MSIDRunIdentity, load_run_state, save_run_state

    full = _saved_by(tmp_path, 4)
    identity = MSIDRunIdentity("d", "i", "msid", 8, 0, new_world, "tiny")
    for rank in range(new_world):
        encoder, head = torch.nn.Linear(6, 6), ShardedMarginSoftmax(13, 6, rank=rank, world_size=new_world, seed=9)
        optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()])
        saved = load_run_state(tmp_path, encoder, head, optimizer, identity, rank)
        assert saved.step == 5 and saved.losses == [1.0] * 5
        rows = slice(head.start, head.start + head.count)
        assert torch.equal(head.weight.detach(), full["weight"][rows])
        state = optimizer.state[head.weight]
        assert torch.equal(state["exp_avg"], full["exp_avg"][rows])
        assert torch.equal(state["exp_avg_sq"], full["exp_avg_sq"][rows]) and int(state["step"]) == 1
    save_run_state(tmp_path, 6, encoder, head, optimizer, [1.0] * 6, {}, identity, 0)
    left = {int(p.name.removeprefix("classifier_rank").split("_")[0]) for p in tmp_path.glob("classifier_*")}
    assert max(left) < new_world  # rank 0 removed the shards of ranks the new world has not


def test_a_missing_old_shard_is_named_when_resharding(tmp_path):
    from f2d_core.errors import WeightFileError
    from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
    from f2d_core.msid_training.run_state import MSIDRunIdentity, load_run_state

    _saved_by(tmp_path, 4)
    (tmp_path / "classifier_rank2_step5.safetensors").unlink()
    encoder, head = torch.nn.Linear(6, 6), ShardedMarginSoftmax(13, 6, rank=0, world_size=2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()])
    identity = MSIDRunIdentity("d", "i", "msid", 8, 0, 2, "tiny")
    with pytest.raises(
        WeightFileError, match=r"saved by 4 processes at step 5, but classifier_rank2_step5\.safetensors"
    ):
        load_run_state(tmp_path, encoder, head, optimizer, identity, 0)


def test_deterministic_option_turns_on_deterministic_kernels_and_off_tf32():
    """Issue 18: bit-exact resumes held on the CPU only; --deterministic makes them hold on a GPU too."""
    from cli.train_msid import build_parser, use_deterministic_kernels

    args = build_parser().parse_args(
        ["--data", "d", "--out", "o", "--run-dir", "r", "--deterministic", "--worker-start", "spawn"]
    )
    assert args.deterministic and args.worker_start == "spawn" and args.stop_check_every == 10
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
    )
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        use_deterministic_kernels()
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3], saved[4]
        torch.backends.cuda.enable_flash_sdp(saved[5])
        torch.backends.cuda.enable_mem_efficient_sdp(saved[6])
