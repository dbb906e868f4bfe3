"""Faces in photos: detection, alignment, expression, parsing."""
