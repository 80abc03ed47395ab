"""Privacy-preserving frequency-domain face recognition.

Importing this package registers the privacy methods with the recognizer registry
(``facesynth train-recognizer --privacy NAME``); see :mod:`facesynth.privacy.api` for the
client/server API and :mod:`facesynth.privacy.frequency_frontend` for the shared block DCT.
"""

from facesynth.privacy import dctdp, duetface, minusface, partialface  # noqa: F401  (registration on import)
