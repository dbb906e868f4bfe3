"""Errors a user can act on: each message names the input, what is wrong and what to do."""


class F2DError(Exception):
    """Base of every error this pack raises on purpose."""


class WeightFileError(F2DError):
    """A weight file is missing, truncated, unsafe or belongs to another model.

    `problem` says what is wrong with the file; `fix` what to do in the place it was chosen (a node's
    input by default), so that a command line can say its own fix instead.
    """

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(f"{problem} {fix}".strip())
        self.problem, self.fix = problem, fix


class NoFaceError(F2DError):
    """No face was found in an input image."""


class ModelPackError(F2DError):
    """An insightface model pack (or another auxiliary model) is missing or unusable."""


class PromptError(F2DError):
    """A prompt cannot carry S* (identifier missing, unsupported text encoder)."""


class DatasetError(F2DError):
    """A training folder cannot be used."""


class MissingPackageError(F2DError):
    """A package a feature needs is not installed, or fails to import; the message names it and the fix."""


class EvaluationError(F2DError):
    """Images, references, prompts or scoring models cannot be evaluated as given."""


class WriteError(F2DError, OSError):
    """A file could not be written (full disk, read-only folder); any previous file of that name is intact.

    Also an OSError, so that callers that treat a failed write as skippable (caches) keep doing so.
    """
