"""Serving side: runtime engines over exported artifacts, batcher, label cache, REST and gRPC."""
