"""S* in CLIP conditioning: where it is injected."""
