"""Face2Diffusion in pure PyTorch: nothing here imports ComfyUI."""
