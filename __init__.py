"""facesynth: synthetic face-recognition data, from identity-conditioned diffusion to benchmarks.

The repository root is this package: ``pipelines``, ``generators``, ``recognizers``, ``privacy``,
``data_cards``, ``tests`` and ``benchmarks`` install as ``facesynth.<folder>``.
"""

__version__ = "0.1.0"
