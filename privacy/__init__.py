"""Privacy-preserving frequency-domain face recognition.

The four methods (DCTDP, DuetFace, PartialFace, MinusFace) are recognition methods in the one
registry, :data:`facesynth.recognizers.methods.METHODS`, which imports their modules on first lookup:
``build_method("dctdp", ...)`` needs no prior import of this package. See
:mod:`facesynth.privacy.api` for the client/server API and :mod:`facesynth.privacy.frequency_frontend`
for the shared block DCT.
"""
