"""What preparing a training folder did: files used, files skipped and why, cache hits; text for a UI, JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

# Why a file was left out (the keys of `DatasetReport.counts()`), with the words a summary uses.
NOT_IMAGE = "not_image"
UNREADABLE = "unreadable"
NO_FACE = "no_face"
MASK_MISSING = "mask_missing"
MASK_UNUSABLE = "mask_unusable"
NESTED_FOLDER = "nested_folder"
# Face-recognition data (MSID training): identity folders and insightface record files.
FACE_TOO_SMALL = "face_too_small"
NO_IDENTITY = "no_identity"
EMPTY_IDENTITY = "empty_identity"
BAD_RECORD = "bad_record"
REASON_WORDS: dict[str, str] = {
    NOT_IMAGE: "not an image",
    UNREADABLE: "unreadable or truncated image",
    NO_FACE: "no face found",
    MASK_MISSING: "no mask in the mask folder",
    MASK_UNUSABLE: "mask unreadable or of another size",
    NESTED_FOLDER: "folder inside a person folder (not searched)",
    FACE_TOO_SMALL: "face too small to align",
    NO_IDENTITY: "file outside any identity folder",
    EMPTY_IDENTITY: "identity folder without a usable image",
    BAD_RECORD: "damaged record",
}
_LISTED = 3  # file names a summary line shows per reason


@dataclass(frozen=True)
class SkippedFile:
    """One file left out: its path relative to the folder, a reason code and the detail for a human."""

    file: str
    reason: str
    detail: str = ""


@dataclass
class DatasetReport:
    """The outcome of `prepare_dataset` for one folder."""

    folder: str
    total_files: int = 0
    used: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    from_cache: int = 0  # files (used or skipped) whose result was read from the cache
    computed: int = 0  # files whose result was computed in this run
    cache_repaired: int = 0  # cache files that were damaged and were computed again
    mask_source: str = ""
    expression: bool = False

    def skip(self, file: str, reason: str, detail: str = "") -> None:
        """Record a file left out."""
        self.skipped.append(SkippedFile(file, reason, detail))

    def counts(self) -> dict[str, int]:
        """Skipped files per reason code, in a fixed order."""
        found = Counter(s.reason for s in self.skipped)
        return {reason: found[reason] for reason in REASON_WORDS if found[reason]}

    def files_for(self, reason: str) -> list[str]:
        """The skipped files with this reason code."""
        return [s.file for s in self.skipped if s.reason == reason]

    def skipped_text(self) -> str:
        """'2 not an image (a.txt, b.doc); 1 no face found (cat.png)', or 'none'."""
        parts = []
        for reason, count in self.counts().items():
            names = self.files_for(reason)
            shown = ", ".join(names[:_LISTED]) + (", ..." if len(names) > _LISTED else "")
            parts.append(f"{count} {REASON_WORDS[reason]} ({shown})")
        return "; ".join(parts) or "none"

    def summary(self) -> str:
        """A few lines for a UI: what was used, what was skipped and why, where masks and expressions came from."""
        lines = [
            f"{len(self.used)} of {self.total_files} files usable in {self.folder} "
            f"({self.from_cache} from the cache, {self.computed} computed"
            + (f", {self.cache_repaired} damaged cache files redone" if self.cache_repaired else "")
            + ").",
            f"Skipped: {self.skipped_text()}.",
            f"Face masks: {self.mask_source}.",
            "Expression codes: "
            + ("yes." if self.expression else "none (no expression model given: training uses null_exp only)."),
        ]
        return "\n".join(lines)

    def to_json(self) -> str:
        """The whole report as JSON (counts included), for saving next to a trained mapper."""
        data = asdict(self)
        data["counts"] = self.counts()
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> DatasetReport:
        """The report `to_json` wrote (raises ValueError, KeyError or TypeError for other text)."""
        data = json.loads(text)
        data.pop("counts", None)
        data["skipped"] = [SkippedFile(**s) for s in data.get("skipped", [])]
        return cls(**data)
