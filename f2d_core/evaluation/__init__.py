"""Scoring generated images: identity (ArcFace-style recogniser), prompt fidelity (CLIP), best of N, benchmark."""
