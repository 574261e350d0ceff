"""Engine layer: dynamic batcher, label cache, scoring and the tagging service."""

from service.engine.tagging import State, TaggingService, TagOptions, TagOutcome

__all__ = ["State", "TagOptions", "TagOutcome", "TaggingService"]
