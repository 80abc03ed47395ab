"""``python -m facesynth ...``: the same CLI as the ``facesynth`` console script."""

from facesynth.pipelines.cli import main

raise SystemExit(main())
