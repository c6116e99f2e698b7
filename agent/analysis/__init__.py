"""Per-window analysis: calibrated sound pressure levels and AST AudioSet classification.

- :mod:`agent.analysis.levels`: unweighted Leq in dB re 20 µPa (scikit-maad).
- :mod:`agent.analysis.models`: model provenance (id, sha256), resolution of a hub id or a
  local directory, and the random-weight test scaffold.
- :mod:`agent.analysis.features`: the AST log-mel fbank input in numpy (equal to
  transformers' ``ASTFeatureExtractor``), shared by both backends.
- :mod:`agent.analysis.classifier`: multi-label AST classification, ``torch`` and ``onnx``
  backends chosen through the ``BACKENDS`` registry; ``onnx`` needs neither torch,
  transformers nor optimum.

Importing this package (or any of its modules) loads no model and imports neither torch,
transformers, optimum nor scikit-maad; those are imported when first used.
"""
