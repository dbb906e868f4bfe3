"""The Fig. 4 analysis (cli/msid_layers.py): per tapped layer verification of real encoder files, on CPU.

Faces have no labelled identity set offline: the identities are tests/support/identity_sets.py's (the
real faces packages ship, re-aligned with augmentation, plus synthetic ones). A tiny MSID encoder (the
real structure at width 32, depth 4, taps after every block) is trained briefly with the real trainer
on 8 photos per identity; held-out photos of the same identities, more strongly augmented, give the
verification pairs, written into an insightface-layout .bin. The trained encoder's shallowest tap must
tell the held-out pairs apart better than the same encoder at its random start: the analysis of a file
that learnt nothing (or of the wrong features) fails that.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from cli import msid_layers
from f2d_core.checkpoints import save_f2d_safetensors
from f2d_core.errors import DatasetError, WeightFileError
from f2d_core.identity.msid_encoder import MSIDEncoder
from f2d_core.msid_training.encoder_file import load_msid_any_size
from f2d_core.msid_training.encoder_output import save_trained_encoder
from f2d_core.msid_training.trainer import MSIDTrainer, MSIDTrainSettings, architecture_of, to_encoder_input
from f2d_core.msid_training.verification.layer_analysis import analyse_layers, layer_names, layer_table
from f2d_core.msid_training.verification.pairs import VerificationSet, pairs_from_dataset
from tests.support.identity_sets import identity_set
from tests.support.verification_bins import write_verification_bin

TINY = {"width": 32, "depth": 4, "heads": 2, "tap_blocks": (0, 1, 2, 3)}
LAYERS = ["layer 1", "layer 2", "layer 3", "layer 4", "v_id"]
TRAIN_STEPS = 40  # 10 epochs of the 128 training photos, batch 32: about 20 s on one CPU thread
PAIRS_PER_KIND = 150


@pytest.fixture(scope="module")
def one_thread():
    """Matrices this small run faster on one thread than on several competing for shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _batches(data, batch_size: int):
    def batches(epoch: int, first: int):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch))
        for k in range(first, len(data) // batch_size):
            index = order[k * batch_size : (k + 1) * batch_size]
            yield data.images[index], data.labels[index]

    return batches


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, one_thread):
    """(random.safetensors, trained.safetensors, held-out VerificationSet, the trained encoder)."""
    root = tmp_path_factory.mktemp("msid_layers")
    train = identity_set(8, 8, seed=0)
    held = identity_set(6, 8, seed=1, strength=1.5)
    torch.manual_seed(0)
    encoder = MSIDEncoder(**TINY)
    random_path = save_f2d_safetensors(
        root / "random.safetensors",
        msid=encoder,
        metadata={"run_identity": json.dumps({"architecture": architecture_of(encoder)})},
    )
    settings = MSIDTrainSettings(epochs=100, batch_size=32, warmup_fraction=0.02, max_steps=TRAIN_STEPS)
    trainer = MSIDTrainer(encoder.train(), train, _batches(train, 32), settings, root / "run", init_digest="r")
    result = trainer.run()
    trained_path = save_trained_encoder(root / "trained.safetensors", trainer.encoder, result, settings, train, "r")
    return random_path, trained_path, pairs_from_dataset(held, PAIRS_PER_KIND, seed=2), trainer.encoder, held


@pytest.fixture(scope="module")
def cli_run(encoders, tmp_path_factory):
    """cli/msid_layers.py on both encoders and a .bin of the held-out pairs (Python 2's protocol-2 layout)."""
    random_path, trained_path, pairs, _, _ = encoders
    root = tmp_path_factory.mktemp("msid_layers_cli")
    interleaved = torch.stack([pairs.faces[pairs.first], pairs.faces[pairs.second]], dim=1).flatten(0, 1)
    bin_path = write_verification_bin(root / "held_out.bin", interleaved, pairs.same, protocol=2, image_format="PNG")
    out = root / "out"
    argv = ["--encoder", f"random={random_path}", "--encoder", str(trained_path), "--pairs", str(bin_path)]
    code = msid_layers.main([*argv, "--out", str(out), "--batch-size", "64"])
    return code, out


def test_cli_writes_a_row_per_tap_and_v_id_for_each_encoder(cli_run):
    code, out = cli_run
    assert code == 0
    summary = json.loads((out / "layers.json").read_text())
    assert summary["pairs"] == "held_out.bin"
    assert list(summary["encoders"]) == ["random", "trained"]
    for name, entry in summary["encoders"].items():
        assert list(entry["layers"]) == LAYERS
        for layer in entry["layers"].values():
            assert 0.0 <= layer["auc"] <= 1.0 and 0.0 <= layer["accuracy"] <= 1.0
        for layer in ["layer_1", "layer_2", "layer_3", "layer_4", "v_id", "layers"]:
            with Image.open(out / f"{name}_{layer}.png") as image:
                assert image.size[0] >= 560 and image.getextrema() != ((255, 255),) * 3
    table = (out / "layers.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| layer ") or line.startswith("| v_id")]
    assert [row.split("|")[1].strip() for row in rows[1:]] == LAYERS
    header = rows[0]
    assert "random AUC %" in header and "trained acc. %" in header and "paper ArcFace AUC %" in header
    layer_3 = [cell.strip() for cell in rows[3].split("|")]
    assert layer_3[-3:-1] == ["93.99", "99.46"]  # the paper's ArcFace and MSID beside ours
    assert [cell.strip() for cell in rows[5].split("|")][-3:-1] == ["", ""]  # v_id: the paper gives none
    assert f"{100 * summary['encoders']['trained']['layers']['layer 3']['auc']:.2f}" in rows[3]
    assert f"{PAIRS_PER_KIND} same-identity and {PAIRS_PER_KIND} different-identity pairs" in table


def test_trained_shallow_tap_tells_identities_apart_better_than_random(cli_run):
    """Fig. 4's point on a small scale: training with the multi-scale loss makes the shallowest tap identity-aware."""
    _, out = cli_run
    layers = {name: e["layers"] for name, e in json.loads((out / "layers.json").read_text())["encoders"].items()}
    random_auc, trained_auc = layers["random"]["layer 1"]["auc"], layers["trained"]["layer 1"]["auc"]
    assert trained_auc > random_auc + 0.025, (random_auc, trained_auc)
    assert layers["trained"]["v_id"]["auc"] > layers["random"]["v_id"]["auc"] + 0.025


def test_each_layer_scores_its_own_tap(encoders):
    """The per-layer cosines equal those of each tap's token through its BatchNorm and LayerNorm, computed apart."""
    _, _, pairs, encoder, _ = encoders
    encoder.train()
    results = analyse_layers(encoder, pairs, batch_size=50)
    assert [r.name for r in results] == layer_names(encoder) == LAYERS
    assert encoder.training  # the analysis restores the mode it found
    encoder.eval()
    with torch.no_grad():
        tokens = encoder.scale_tokens(to_encoder_input(pairs.faces, None))
        features = [norm(t) for t, norm in zip(tokens, encoder.layer_norms(), strict=True)]
    encoder.train()
    features.append(torch.cat(features, dim=-1))
    for result, feature in zip(results, features, strict=True):
        cosines = F.cosine_similarity(feature[pairs.first], feature[pairs.second], dim=-1)
        torch.testing.assert_close(result.same_scores, cosines[pairs.same], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result.different_scores, cosines[~pairs.same], atol=1e-5, rtol=1e-5)
    assert len({round(r.metrics.auc, 6) for r in results}) > 1  # the layers really differ


def test_pairs_from_an_identity_folder(encoders, tmp_path):
    """A held-out folder of aligned crops (as VGGFace2 / CASIA-WebFace ship) instead of a .bin."""
    random_path, _, _, _, held = encoders
    folder = held.write_folder(tmp_path / "held_out")
    out = tmp_path / "out"
    code = msid_layers.main(
        ["--encoder", str(random_path), "--pairs", str(folder), "--out", str(out), "--max-pairs", "60"]
    )
    assert code == 0
    summary = json.loads((out / "layers.json").read_text())
    assert "held_out" in summary["pairs"] and "30 + 30 pairs, seed 0" in summary["pairs"]
    assert list(summary["encoders"]["random"]["layers"]) == LAYERS


def test_errors_are_one_line(tmp_path, encoders, caplog):
    random_path = encoders[0]
    evil = tmp_path / "lfw.bin"
    evil.write_bytes(b"\x80\x02cposix\nsystem\nq\x00U\x0btouch /tmp/x\x85R.")
    with caplog.at_level(logging.ERROR, logger="f2d.msid_layers"):
        assert msid_layers.main(["--encoder", str(random_path), "--pairs", str(evil), "--out", str(tmp_path)]) == 1
        assert (
            msid_layers.main(["--encoder", str(tmp_path / "no.pt"), "--pairs", str(evil), "--out", str(tmp_path)]) == 1
        )
    assert "posix.system" in caplog.text and "no.pt: the file does not exist" in caplog.text
    assert not (tmp_path / "layers.md").exists()


def test_a_set_of_one_kind_of_pair_is_refused_before_encoding(encoders):
    _, _, pairs, encoder, _ = encoders
    only_same = VerificationSet(pairs.faces, pairs.first[:5], pairs.second[:5], pairs.same[:5], "same.bin")
    assert bool(only_same.same.all())
    with pytest.raises(DatasetError, match=r"same\.bin has 5 same-identity and 0 different-identity pairs"):
        analyse_layers(encoder, only_same)


def test_encoder_files_of_both_sizes_load(tmp_path):
    """msid.pt's architecture through load_msid; a smaller trained file from its shapes and recorded heads."""
    torch.manual_seed(0)
    official = MSIDEncoder()
    torch.save(official.state_dict(), tmp_path / "msid.pt")
    loaded = load_msid_any_size(tmp_path / "msid.pt")
    assert loaded.tap_blocks == (2, 5, 8, 11) and not loaded.training
    torch.testing.assert_close(loaded.norms["layer_5"][0].weight, official.norms["layer_5"][0].weight)
    tiny = MSIDEncoder(width=32, depth=3, heads=4, tap_blocks=(1, 2))
    save_f2d_safetensors(
        tmp_path / "t.safetensors",
        msid=tiny,
        metadata={"run_identity": json.dumps({"architecture": architecture_of(tiny)})},
    )
    loaded = load_msid_any_size(tmp_path / "t.safetensors")
    assert loaded.tap_blocks == (1, 2) and loaded.blocks[0].attn.num_heads == 4
    save_f2d_safetensors(tmp_path / "bare.safetensors", msid=tiny)
    with pytest.raises(WeightFileError, match="does not record its number of attention heads"):
        load_msid_any_size(tmp_path / "bare.safetensors")


def test_table_without_results_for_a_layer_leaves_cells_empty(encoders):
    """Encoders of different taps in one table: each row shows what each encoder has."""
    _, _, _, encoder, held = encoders
    few = pairs_from_dataset(held, 20, seed=3)
    results = {"tiny": analyse_layers(encoder, few)}
    results["two taps"] = [r for r in results["tiny"] if r.name in ("layer 2", "v_id")]
    table = layer_table(results, "x")
    layer_1 = next(line for line in table.splitlines() if line.startswith("| layer 1 "))
    cells = [cell.strip() for cell in layer_1.split("|")]
    assert cells[2] and cells[3] and " +- " in cells[4] and cells[5:8] == ["", "", ""]  # AUC, acc., 10-fold acc.


def test_a_small_held_out_folder_is_scored_on_the_pairs_it_allows(encoders, tmp_path, caplog):
    """Without --max-pairs, a folder with fewer than LFW's 3000 + 3000 pairs is scored on all it allows; asking
    for more than it allows names --max-pairs and the most it can be."""
    random_path = encoders[0]
    small = identity_set(3, 3, real=False, seed=4)  # 3 identities x 3 photos: 9 same-identity pairs
    folder = small.write_folder(tmp_path / "small_held_out")
    argv = ["--encoder", str(random_path), "--pairs", str(folder), "--out", str(tmp_path / "out")]
    with caplog.at_level(logging.INFO, logger="f2d.msid_layers"):
        assert msid_layers.main(argv) == 0
        assert msid_layers.main([*argv, "--max-pairs", "40"]) == 1
    summary = json.loads((tmp_path / "out" / "layers.json").read_text())
    assert "9 + 9 pairs" in summary["pairs"]
    assert "allows 9 pairs of each kind: scoring 9 + 9 pairs" in caplog.text
    assert "--max-pairs 40:" in caplog.text and "lower --max-pairs to at most 18" in caplog.text


def test_the_layer_sheet_is_a_grid_and_the_axes_stay_within_what_cosines_and_shares_can_be(cli_run):
    from f2d_core.evaluation.plots import COSINE, HEIGHT, SHARE, WIDTH, axis_range

    _, out = cli_run
    with Image.open(out / "trained_layers.png") as sheet:
        assert sheet.size == (3 * WIDTH, 2 * HEIGHT)  # five panels: three columns, two rows
    assert axis_range([0.93, 0.999], COSINE)[1] == 1.0 and axis_range([-0.999, 0.2], COSINE)[0] == -1.0
    assert axis_range([0.0, 0.31], SHARE)[0] == 0.0
    assert axis_range([0.0, 0.31])[0] < 0.0  # unbounded, as the other charts keep it
