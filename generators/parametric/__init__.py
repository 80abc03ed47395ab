"""The parametric face renderer (the ``parametric`` generator), split by concern.

- :mod:`.parameters`: identity and nuisance parameters and their seeded sampling;
- :mod:`.geometry`: head frame, part frames, canvas and soft shape primitives;
- :mod:`.painters`: one painter per face part, shading and the finish (blur, noise, 8-bit);
- :mod:`.renderer`: :func:`render_face`, landmarks and the registered :class:`ParametricRenderer`;
- :mod:`.difficulty`: the raw-pixel verification check of how hard its faces are.
"""
