"""Training core without a diffusion model: the losses, the resumable state file, batches, settings."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from f2d_core.errors import F2DError
from f2d_core.identity.mapper import F2DMapper
from f2d_core.training.data.dataset import TrainingSet
from f2d_core.training.data.report import DatasetReport
from f2d_core.training.losses import denoising_loss, needs_class_prediction
from f2d_core.training.mapper_output import check_mapper_destination, run_of
from f2d_core.training.precision import LossScale
from f2d_core.training.run_identity import RunIdentity, RunMismatch, dataset_digest, names_only_dataset_digest
from f2d_core.training.state_file import check_free_disk, load_state, save_state, state_bytes
from f2d_core.training.trainer import TrainSettings, sample_batch


def test_cgdr_target_is_noise_on_the_face_and_class_prediction_elsewhere():
    eps, eps_class = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4, :] = 1
    target = eps * mask + eps_class * (1 - mask)
    assert denoising_loss("cgdr", target, eps, mask, eps_class).item() == pytest.approx(0.0, abs=1e-12)
    # Matching the noise everywhere is penalised off the face, where the class prediction rules.
    expected = ((eps - eps_class) ** 2 * (1 - mask)).mean()
    assert denoising_loss("cgdr", eps, eps, mask, eps_class).item() == pytest.approx(expected.item())


def test_baselines():
    eps, eps_hat = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    assert denoising_loss("reconstruction", eps_hat, eps).item() == pytest.approx(((eps - eps_hat) ** 2).mean().item())
    masked = (((eps - eps_hat) * mask) ** 2).mean().item()
    assert denoising_loss("masked_reconstruction", eps_hat, eps, mask).item() == pytest.approx(masked)
    assert needs_class_prediction("cgdr") and not needs_class_prediction("reconstruction")


def test_cgdr_gradient_never_reaches_the_class_prediction():
    eps_class = torch.randn(1, 4, 8, 8, requires_grad=True)
    eps_hat = torch.randn(1, 4, 8, 8, requires_grad=True)
    denoising_loss("cgdr", eps_hat, torch.randn(1, 4, 8, 8), torch.zeros(1, 1, 8, 8), eps_class).backward()
    assert eps_class.grad is None and eps_hat.grad is not None


def _trained_pair():
    mapper = F2DMapper()
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-3)
    mapper(torch.randn(2, 1536), torch.randn(2, 64)).square().mean().backward()
    optimizer.step()
    return mapper, optimizer


IDENTITY = RunIdentity(dataset="d" * 64, start_mapper="m" * 64, loss="cgdr", global_batch_size=8, seed=0, world_size=1)


def test_state_round_trip_restores_mapper_moments_step_losses_and_identity_but_not_the_learning_rate(tmp_path):
    mapper, optimizer = _trained_pair()
    path = save_state(tmp_path / "state.safetensors", mapper, optimizer, 7, [1.0, 0.5], {"loss": "cgdr"}, IDENTITY)
    fresh = F2DMapper()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-5)
    point = load_state(path, fresh, fresh_optimizer, IDENTITY)
    assert (point.step, point.losses, point.settings) == (7, [1.0, 0.5], {"loss": "cgdr"})
    assert point.identity == IDENTITY
    for (name, a), b in zip(mapper.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-5  # the caller's learning rate wins
    assert point.optimizer_hyper[0]["lr"] == 1e-3  # the saved one is reported
    old = optimizer.state[mapper.null_exp]
    new = fresh_optimizer.state[fresh.null_exp]
    assert torch.equal(old["exp_avg"], new["exp_avg"]) and torch.equal(old["exp_avg_sq"], new["exp_avg_sq"])
    assert not list(tmp_path.glob("*.partial"))


def test_the_fp16_loss_scale_is_saved_and_restored_and_only_under_fp16(tmp_path):
    mapper, optimizer = _trained_pair()
    scale = LossScale(enabled=True)
    scale.update(False)  # an overflow: 2^15
    scale.update(True)
    path = save_state(tmp_path / "state.safetensors", mapper, optimizer, 3, [1.0], {}, IDENTITY, scale)
    point = load_state(path, F2DMapper(), torch.optim.AdamW(F2DMapper().parameters()), IDENTITY)
    assert point.loss_scale == {"scale": 2.0**15, "finite_steps": 1}
    resumed = LossScale(enabled=True)
    resumed.load_state_dict(point.loss_scale)
    assert resumed.state_dict() == scale.state_dict()
    disabled = LossScale(enabled=False)  # a run resumed in bf16 / fp32 keeps no scale
    disabled.load_state_dict(point.loss_scale)
    assert disabled.scale == 1.0
    plain = save_state(tmp_path / "fp32.safetensors", mapper, optimizer, 3, [1.0], {}, IDENTITY, LossScale(False))
    assert load_state(plain, F2DMapper(), torch.optim.AdamW(F2DMapper().parameters())).loss_scale is None


def test_a_state_of_another_run_is_refused_before_anything_is_restored(tmp_path):
    mapper, optimizer = _trained_pair()
    run_dir = tmp_path / "f2d_mapper"
    path = save_state(run_dir / "state.safetensors", mapper, optimizer, 7, [1.0], {}, IDENTITY)
    (tmp_path / "f2d_mapper_2").mkdir()  # taken: the suggestion skips it
    fresh = F2DMapper()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    other = RunIdentity(**{**IDENTITY.__dict__, "loss": "reconstruction", "global_batch_size": 16})
    with pytest.raises(RunMismatch) as refused:
        load_state(path, fresh, torch.optim.AdamW(fresh.parameters()), other)
    message = str(refused.value)
    assert "loss (saved run: cgdr, now: reconstruction)" in message
    assert "batch size (saved run: 8, now: 16)" in message
    assert "'f2d_mapper_3'" in message and "turn resume off" in message
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


def test_identity_names_every_difference_and_shortens_digests():
    other = RunIdentity(dataset="e" * 64, start_mapper="n" * 64, loss="cgdr", global_batch_size=8, seed=3, world_size=2)
    assert IDENTITY.differences(IDENTITY) == []
    assert other.differences(IDENTITY) == [
        f"dataset (saved run: {'d' * 12}, now: {'e' * 12})",
        f"starting mapper (saved run: {'m' * 12}, now: {'n' * 12})",
        "seed (saved run: 0, now: 3)",
        "number of processes (world size) (saved run: 1, now: 2)",
    ]
    assert RunIdentity.from_json(IDENTITY.to_json()) == IDENTITY


def test_dataset_digest_changes_with_the_folder_its_files_and_their_content():
    data = _data()
    digest = dataset_digest(data)
    assert digest == dataset_digest(_data())
    data.files = [*data.files[:-1], "other.png"]
    assert dataset_digest(data) != digest
    moved = _data()
    moved.report = DatasetReport(folder="y")
    assert dataset_digest(moved) != digest
    replaced = _data()
    replaced.keys = [*replaced.keys[:-1], "f" * 64]  # the last photo replaced under the same name
    assert dataset_digest(replaced) != digest and names_only_dataset_digest(replaced) == names_only_dataset_digest(
        _data()
    )
    data.fingerprint = "abc"  # a training set that carries its own fingerprint is identified by it
    assert dataset_digest(data) == "abc"


def test_a_state_saved_before_photo_contents_were_hashed_resumes_with_a_warning(tmp_path, caplog):
    mapper, optimizer = _trained_pair()
    data = _data()
    old = RunIdentity(**{**IDENTITY.__dict__, "dataset": names_only_dataset_digest(data)})
    path = save_state(tmp_path / "state.safetensors", mapper, optimizer, 4, [1.0], {}, old)
    now = RunIdentity(**{**IDENTITY.__dict__, "dataset": dataset_digest(data)})
    with pytest.raises(RunMismatch, match="dataset"):
        load_state(path, F2DMapper(), torch.optim.AdamW(F2DMapper().parameters()), now)
    with caplog.at_level("WARNING"):
        point = load_state(path, F2DMapper(), torch.optim.AdamW(F2DMapper().parameters()), now, old)
    assert point.step == 4 and "identified the photos by file name only" in caplog.text
    other_seed = RunIdentity(**{**old.__dict__, "seed": 9})  # only the dataset's digest may differ so
    with pytest.raises(RunMismatch):
        load_state(path, F2DMapper(), torch.optim.AdamW(F2DMapper().parameters()), now, other_seed)


def test_a_trained_mapper_never_replaces_another_file_and_replaces_a_mapper_only_when_asked(tmp_path):
    from f2d_core.checkpoints import save_f2d_safetensors
    from f2d_core.errors import F2DError

    check_mapper_destination(tmp_path / "new.safetensors", overwrite=False)
    mapper_file = save_f2d_safetensors(tmp_path / "mine.safetensors", mapper=F2DMapper())
    with pytest.raises(F2DError, match=r"already holds a Face2Diffusion mapper from another run\. Turn on overwrite"):
        check_mapper_destination(mapper_file, overwrite=False)
    assert "(overwrite)" in check_mapper_destination(mapper_file, overwrite=True)
    from f2d_core.identity.msid_encoder import MSIDEncoder

    combined = tmp_path / "combined.safetensors"
    save_f2d_safetensors(combined, msid=MSIDEncoder(), mapper=F2DMapper())
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not safetensors at all")
    for path, what in ((combined, "holds more than a mapper"), (other, "not a safetensors file")):
        with pytest.raises(F2DError, match=what):
            check_mapper_destination(path, overwrite=True)


def test_the_same_run_continued_replaces_its_own_mapper_and_no_other_run_does(tmp_path):
    from f2d_core.checkpoints import save_f2d_safetensors
    from f2d_core.errors import F2DError

    identity = {"dataset": "d", "start_mapper": "m", "loss": "cgdr", "global_batch_size": 2, "seed": 0, "world_size": 1}
    settings = {"run_dir": str(tmp_path / "runs" / "a"), "run_identity": identity}
    saved = save_f2d_safetensors(
        tmp_path / "m.safetensors", mapper=F2DMapper(), metadata={"training_settings": settings, "trained_steps": "2"}
    )
    note = check_mapper_destination(saved, overwrite=False, run=run_of({**settings, "steps": 4}))
    assert note == "replaced this run's earlier mapper (step 2) in m.safetensors"
    for other in (
        {**settings, "run_dir": str(tmp_path / "runs" / "b")},
        {**settings, "run_identity": {**identity, "seed": 1}},
    ):
        with pytest.raises(F2DError, match=r"from another run\. Turn on overwrite"):
            check_mapper_destination(saved, overwrite=False, run=run_of(other))
    assert run_of({"run_dir": "x"}) is None


def test_training_state_refuses_other_files(tmp_path, official_checkpoints):
    from f2d_core.errors import WeightFileError

    mapper, optimizer = _trained_pair()
    with pytest.raises(WeightFileError, match="not a Face2Diffusion training state"):
        load_state(official_checkpoints[1], mapper, optimizer)


def test_a_run_without_room_for_its_checkpoints_is_refused(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(F2DError, match=r"Not enough free disk for training checkpoints.*MiB needed"):
        check_free_disk(tmp_path / "run", free + (1 << 40))
    check_free_disk(tmp_path / "run", 1)
    assert state_bytes(F2DMapper()) == 3 * 4 * 12_000_832


def _data(n: int = 6, views: int = 2) -> TrainingSet:
    return TrainingSet(
        idvec=torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, views, 1536).clone(),
        expression=torch.zeros(n, views, 64),
        latents=torch.arange(n, dtype=torch.float32)[:, None, None, None, None].expand(n, views, 4, 2, 2).clone(),
        masks=torch.ones(n, views, 1, 2, 2),
        person=["a", "a", "a", "b", "b", ""],
        files=[str(i) for i in range(n)],
        report=DatasetReport(folder="x"),
        keys=[f"{i:064x}" for i in range(n)],
    )


def test_batches_are_a_function_of_seed_and_step_so_a_resumed_run_sees_the_same_data():
    data, settings = _data(), TrainSettings(batch_size=4, seed=3)
    a, b = sample_batch(data, settings, 11), sample_batch(data, settings, 11)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.keep_expression, b.keep_expression)
    assert not torch.equal(sample_batch(data, settings, 12).latents, a.latents)
    ranks = [sample_batch(data, settings, 11, rank=r, world_size=2).latents for r in (0, 1)]
    assert not torch.equal(ranks[0], ranks[1])  # each rank draws its own share of the step


def test_shuffle_takes_the_identity_from_another_photo_of_the_same_person():
    data = _data()
    settings = TrainSettings(batch_size=64, shuffle_identities=True)
    batch = sample_batch(data, settings, 0)
    target = batch.latents[:, 0, 0, 0].long()
    reference = batch.idvec[:, 0].long()
    for t, r in zip(target.tolist(), reference.tolist(), strict=True):
        if t == 5:  # directly in the folder: its own identity
            assert r == 5
        else:
            assert r != t and data.person[r] == data.person[t]


def test_shuffle_says_when_it_cannot_shuffle():
    data = _data()
    assert data.shuffle_note().startswith("shuffle_identities: 1 of 6 photos have no other photo of their person")
    data.person = [""] * 6  # a flat folder
    data.__post_init__()
    assert "shuffle_identities does nothing here: no person has two photos" in data.shuffle_note()
    data.person = ["a", "a", "a", "b", "b", "b"]
    data.__post_init__()
    assert data.shuffle_note() == ""


def test_expression_dropout_rate_and_no_expression_without_codes():
    settings = TrainSettings(batch_size=4000, expression_dropout=0.2)
    keep = sample_batch(_data(), settings, 0).keep_expression
    assert 0.75 < keep.mean().item() < 0.85
    data = _data()
    data.expression = None
    assert sample_batch(data, settings, 0).keep_expression.sum() == 0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"loss": "l1"}, "loss must be one of"), ({"steps": 0}, "at least 1"), ({"expression_dropout": 1.5}, r"\[0, 1\]")],
)
def test_settings_that_cannot_work_are_refused(kwargs, words):
    with pytest.raises(F2DError, match=words):
        TrainSettings(**kwargs)


@pytest.mark.filterwarnings("ignore:.*to a meta parameter:UserWarning")  # meta weights hold no values
def test_resumed_adamw_state_is_placed_as_torchs_own_load_state_dict_places_it(tmp_path):
    """On a GPU the moments go to the parameters' device and the step counter stays on the CPU, as
    `Optimizer.load_state_dict` does for a non-capturable AdamW (a device step costs a sync per
    parameter each step). The "meta" device stands in for the GPU."""
    mapper, optimizer = _trained_pair()
    path = save_state(tmp_path / "state.safetensors", mapper, optimizer, 7, [1.0], {}, IDENTITY)
    resumed, reference = F2DMapper().to("meta"), F2DMapper().to("meta")
    resumed_optimizer = torch.optim.AdamW(resumed.parameters())
    reference_optimizer = torch.optim.AdamW(reference.parameters())
    load_state(path, resumed, resumed_optimizer, IDENTITY)
    reference_optimizer.load_state_dict(optimizer.state_dict())
    for (name, p), q in zip(resumed.named_parameters(), reference.parameters(), strict=True):
        got, want = resumed_optimizer.state[p], reference_optimizer.state[q]
        assert {k: v.device.type for k, v in got.items()} == {k: v.device.type for k, v in want.items()}, name
        assert got["step"].device.type == "cpu" and got["exp_avg"].device.type == "meta"


_FULL_DISK = """
import json, resource, signal, sys, torch
from pathlib import Path
from f2d_core.checkpoints import save_f2d_safetensors
from f2d_core.errors import F2DError
from f2d_core.identity.mapper import F2DMapper
from f2d_core.training.state_file import save_state

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
folder, mapper = Path(sys.argv[1]), F2DMapper()
optimizer = torch.optim.AdamW(mapper.parameters())
messages = []
for write in (
    lambda: save_state(folder / "state.safetensors", mapper, optimizer, 9, [0.5], {}),
    lambda: save_f2d_safetensors(folder / "mapper.safetensors", mapper=mapper),
):
    try:
        write()
        messages.append(None)
    except F2DError as e:
        messages.append(str(e))
print(json.dumps(messages))
"""


def test_a_full_disk_keeps_the_previous_state_and_mapper_and_leaves_no_partial_file(tmp_path):
    """Issue 13, writes that fail: the file-size limit makes every write past 1 MiB fail as a full disk does."""
    import json
    import subprocess
    import sys

    from f2d_core.checkpoints import save_f2d_safetensors

    mapper, optimizer = _trained_pair()
    state = save_state(tmp_path / "state.safetensors", mapper, optimizer, 3, [1.0], {})
    saved_mapper = save_f2d_safetensors(tmp_path / "mapper.safetensors", mapper=mapper)
    before = {p: p.read_bytes() for p in (state, saved_mapper)}
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    state_error, mapper_error = json.loads(done.stdout.strip().splitlines()[-1])
    for message, what, path in ((state_error, "training state", state), (mapper_error, "mapper", saved_mapper)):
        assert message is not None, what
        assert f"Could not write the {what} {path}" in message and "the previous" in message, message
        assert "Free some disk space or choose a writable folder" in message
    assert {p: p.read_bytes() for p in before} == before  # intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mapper.safetensors", "state.safetensors"]  # no partial


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_folder_keeps_the_previous_state_and_says_so(tmp_path):
    mapper, optimizer = _trained_pair()
    state = save_state(tmp_path / "run" / "state.safetensors", mapper, optimizer, 3, [1.0], {})
    before = state.read_bytes()
    os.chmod(state.parent, 0o555)
    try:
        with pytest.raises(F2DError, match="the folder is not writable; the previous training state there"):
            save_state(state, mapper, optimizer, 4, [1.0, 0.9], {})
    finally:
        os.chmod(state.parent, 0o755)
    assert state.read_bytes() == before and [p.name for p in state.parent.iterdir()] == ["state.safetensors"]


def test_a_run_name_composed_or_decomposed_is_one_run_folder(tmp_path):
    from f2d_core.training.run_identity import existing_spelling, run_folder_name

    assert run_folder_name("Zo\u00eb") == run_folder_name("Zoe\u0308") == "Zo\u00eb"
    assert run_folder_name("my run/1") == "my_run_1" and run_folder_name("..") == "run"
    (tmp_path / "Zoe\u0308").mkdir()  # made on a Mac
    assert existing_spelling(tmp_path / "Zo\u00eb") == tmp_path / "Zoe\u0308"
    assert existing_spelling(tmp_path / "nobody") == tmp_path / "nobody"


def test_a_run_dir_typed_composed_or_decomposed_is_one_run_for_the_clis(tmp_path):
    """--run-dir and --cache-dir of cli/train_msid.py, --out of cli/benchmark.py (a rerun continues in it):
    "Zoe" with a diaeresis typed composed (Windows, Linux) or decomposed (macOS) names one folder, the one
    that exists in either form, else a new one in NFC (the form of the node's run folders). cli/train_mapper.py
    does the same after importing ComfyUI (tests/integration/test_run_lock_ranks.py)."""
    from cli.benchmark import parse_args as benchmark_args
    from cli.train_msid import parse_args as msid_args
    from f2d_core.training.run_identity import run_dir_spelling

    composed, decomposed = tmp_path / "Zo\u00eb", tmp_path / "Zoe\u0308"

    def msid(run_dir):
        return msid_args(
            ["--data", "d", "--out", "o.safetensors", "--run-dir", str(run_dir), "--cache-dir", str(run_dir)]
        )

    assert run_dir_spelling(decomposed) == run_dir_spelling(str(composed)) == composed  # new: NFC
    assert (msid(decomposed).run_dir, msid(decomposed).cache_dir) == (composed, composed)
    bench = ["--faces", "f", "--checkpoint", "c.safetensors", "--insightface-root", "i", "--recognizer", "r.onnx"]
    assert benchmark_args([*bench, "--out", str(decomposed)]).out == composed
    decomposed.mkdir()  # an existing run, made on a Mac: typed composed, it is found
    assert run_dir_spelling(composed) == decomposed == msid(composed).run_dir
    assert benchmark_args([*bench, "--out", str(composed)]).out == decomposed
    # a new run inside that folder: in it (not in a second "Zoe" folder), its own name composed
    assert run_dir_spelling(composed / "Andr\u00e9") == run_dir_spelling(decomposed / "Andre\u0301")
    assert run_dir_spelling(composed / "Andr\u00e9") == decomposed / "Andr\u00e9"
