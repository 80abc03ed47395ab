"""The base layer every facesynth package may import: errors, config base, atomic I/O, the shard
format (schema, writer, manifest, reader, integrity check), checkpoints and accelerate set-up.

Nothing here imports another facesynth package; see ``tests/test_layers.py``.
"""
