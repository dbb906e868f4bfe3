"""The command-line tools explain themselves from any folder: every option has help text and its default."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _help(script: str, cwd: Path) -> str:
    command = [sys.executable, str(REPO_ROOT / "cli" / script), "--help"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _options(text: str) -> dict[str, str]:
    """{--option: its help text} of an argparse --help page (the lines under "options:")."""
    body = text.split("options:", 1)[1]
    entries = re.split(r"\n  (?=-)", "\n" + body)
    found = {}
    for entry in entries:
        match = re.match(r"(?:-\w, )?(--[\w-]+)", entry.strip())
        if match:
            found[match.group(1)] = " ".join(entry.split())
    return found


def test_benchmark_help_gives_every_option_a_text_and_the_defaults(tmp_path: Path) -> None:
    options = _options(_help("benchmark.py", tmp_path))
    expected = {"--msid": "msid.pt", "--mapper": "mapping.pt", "--size": "512", "--steps": "30", "--cfg": "7.0"}
    for option, default in expected.items():
        assert f"(default: {default})" in options[option], options[option]
    for option, text in options.items():
        words = text.split(None, 2)[2:] if option != "--help" else ["-"]
        assert words and words[0].strip(), f"{option} has no help text: {text!r}"
    assert "(default: None)" not in "".join(options.values())


@pytest.mark.parametrize("flag", ["--checkpoint"])
def test_train_mapper_help_names_the_checkpoint_formats_it_takes(tmp_path: Path, flag: str) -> None:
    """A .ckpt is a pickle: suggested only with the torch the pack's own pickles need."""
    text = _options(_help("train_mapper.py", tmp_path))[flag]
    assert ".safetensors" in text and ".ckpt is a pickle file, read only under torch >= 2.10" in text
    assert ".ckpt" not in (REPO_ROOT / "cli" / "train_mapper.py").read_text(encoding="utf-8").split('"""')[1]


@pytest.mark.parametrize(
    ("script", "defaults"),
    [
        ("train_mapper.py", {"--steps": "100000", "--batch-size": "32", "--lr": "1e-05", "--pack": "buffalo_l"}),
        ("train_msid.py", {"--epochs": "30", "--batch-size": "1024", "--lr": "0.001", "--workers": "8"}),
    ],
)
def test_training_help_shows_the_defaults_and_an_example_with_torchrun(
    tmp_path: Path, script: str, defaults: dict[str, str]
) -> None:
    text = _help(script, tmp_path)
    options = _options(text.split("\nexample", 1)[0])
    for option, default in defaults.items():
        assert f"(default: {default})" in options[option], options[option]
    assert "(default: None)" not in text
    example = text.split("\nexample", 1)[1]
    assert "python " in example and f"cli/{script} --" in example
    assert "torchrun --nproc_per_node" in example and f"cli/{script}" in example.split("torchrun", 1)[1]


def test_train_mapper_refuses_a_ckpt_under_a_torch_that_refuses_the_packs_pickles(
    tmp_path: Path, comfyui_path: Path
) -> None:
    """Under torch 2.9 (as an older install reports it) a .ckpt checkpoint is refused before it is opened, as
    msid.pt would be, with what to give instead."""
    (tmp_path / "sd.ckpt").write_bytes(b"PK\x03\x04 not opened")
    argv = ["--checkpoint", "sd.ckpt", "--msid", "msid.pt", "--mapper", "mapping.pt", "--insightface-root", "."]
    argv += ["--folder", ".", "--cpu", "--run-dir", "run", "--out", "out.safetensors", "--comfyui", str(comfyui_path)]
    script = REPO_ROOT / "cli" / "train_mapper.py"
    code = (
        "import runpy, sys, torch; torch.__version__ = '2.9.1+cu128'; "
        f"sys.path.insert(0, {str(script.parent)!r}); sys.argv = [{str(script)!r}, *{argv!r}]; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "--checkpoint sd.ckpt is a pickle file, and torch 2.9.1+cu128 can be made to run code" in done.stderr
    assert "Give the checkpoint's .safetensors" in done.stderr and "Traceback" not in done.stderr


def test_train_mapper_takes_anchor_reg_and_a_granularity_only_with_checkpointing(capsys) -> None:
    from cli.train_mapper import parse_args

    argv = ["--checkpoint", "sdxl.safetensors", "--msid", "msid.pt", "--from-scratch", "--insightface-root", "."]
    argv += ["--folder", "faces", "--run-dir", "run", "--out", "out.safetensors", "--anchor-reg", "0.5"]
    args = parse_args([*argv, "--gradient-checkpointing", "--checkpoint-granularity", "transformer_block"])
    assert (args.anchor_reg, args.checkpoint_granularity) == (0.5, "transformer_block")
    assert parse_args(argv).checkpoint_granularity is None  # the backend's default, "block"
    with pytest.raises(SystemExit):
        parse_args([*argv, "--checkpoint-granularity", "transformer_block"])
    assert "--checkpoint-granularity goes with --gradient-checkpointing" in capsys.readouterr().err
