"""Training folders outside ComfyUI's input folder: only when the server's owner allows them (no widget)."""

from __future__ import annotations

from pathlib import Path

from tests.support.comfy_library_run import run_library_script

SCRIPTS = Path(__file__).resolve().parent / "library_scripts"


def test_only_the_servers_owner_allows_a_folder_outside_input(comfyui_path, tmp_path):
    result = run_library_script(SCRIPTS / "outside_input_permission.py", comfyui_path, work_dir=str(tmp_path))
    for case in ("empty", "input_itself"):  # never the whole input folder by accident
        assert result[case].startswith("refused: Name the folder of training photos"), result[case]
    assert result["inside"] == f"allowed: {tmp_path / 'input' / 'faces'}"
    for case in ("relative_escape", "outside"):
        assert result[case].startswith("refused: The training folder "), result[case]
        assert "outside ComfyUI's input folder" in result[case]
        assert result["listing"] in result[case] and "F2D_ALLOW_OUTSIDE_INPUT=" in result[case]
    assert result["outside_env"] == f"allowed: {tmp_path / 'elsewhere' / 'photos'}"  # the environment variable
    assert result["other_env"].startswith("refused:")  # ... allows what it lists, nothing else
    assert result["outside_file"].startswith("refused:")
    assert result["other_file"] == f"allowed: {tmp_path / 'elsewhere_too' / 'photos'}"  # the file in user/
