"""Browser tests: ComfyUI's real frontend in Chromium, driven by playwright-core (needs node and COMFYUI_PATH)."""
