"""Errors of the contract: a broken artifact, and a label over the text graph's token limit."""

from __future__ import annotations


class ArtifactError(Exception):
    """A model artifact is missing, broken or disagrees with its manifest (start-up failure)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"model artifact {path}: {problem}")
        self.path = path
        self.problem = problem


class TokenLimitExceeded(ValueError):
    """Text `index` of a batch tokenises to more tokens than the text graph takes."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.message = message
        self.index = index
