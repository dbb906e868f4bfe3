"""Integration tests: the pack inside a real ComfyUI server (needs COMFYUI_PATH)."""
