"""What opening face-recognition training data did: images and identities used, what was skipped and why.

The mapper's `DatasetReport` (skipped files with reason codes, cache hits, JSON), with the counts a
set of millions of images needs instead of a list of every file used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...training.data.report import DatasetReport


@dataclass
class FaceDataReport(DatasetReport):
    """The outcome of `open_training_data`: `folder` is what was read; `used` stays empty (see `images`)."""

    layout: str = ""  # "record files", "identity folder"
    images: int = 0  # usable images
    identities: int = 0  # identities with at least one usable image
    detected: int = 0  # photos aligned by detection (the others were 112x112 crops already)

    def summary(self) -> str:
        """A few lines for a log: what was read, what was used, what was skipped and why."""
        return "\n".join(
            [
                f"{self.images} images of {self.identities} identities usable of {self.total_files} in "
                f"{self.folder} ({self.layout}; {self.detected} aligned by detection, {self.from_cache} results "
                f"from the cache, {self.computed} computed"
                + (f", {self.cache_repaired} damaged cache files redone" if self.cache_repaired else "")
                + ").",
                f"Skipped: {self.skipped_text()}.",
            ]
        )
