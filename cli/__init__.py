"""Headless entry points: run a workflow on a ComfyUI server, or train the mapper with ComfyUI as a library."""
