"""The request pipeline: admission, dynamic batching, the label cache, scoring, vocabularies
and the tagging service that owns them (the layer between the API and the runtime)."""

from service.pipeline.tagging import State, TaggingService, TagOptions, TagOutcome, build_service

__all__ = ["State", "TagOptions", "TagOutcome", "TaggingService", "build_service"]
