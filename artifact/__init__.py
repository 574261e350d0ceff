"""The model artifact contract, shared by the training side (`models`) and serving (`service`).

It imports neither of them, nor torch. Modules:
- `manifest`: the `manifest.json` schema (the exporter builds it, the server reads it);
- `loader`: loading an artifact directory and checking its graphs against the manifest;
- `imaging`: image decoding and preprocessing (numpy + Pillow only);
- `tokenizer`: the label tokenizer both sides use (pad to the longest, never truncate);
- `gflops`: the GFLOPs convention;
- `vocabularies`: the packaged built-in label sets;
- `testing`: a tiny, torch-free artifact and image helpers for tests and benchmarks.

This file imports nothing, so `artifact.imaging` loads with numpy and Pillow alone.
"""
