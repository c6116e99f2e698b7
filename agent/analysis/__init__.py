"""Per-window analysis: calibrated noise indicators, acoustic indices, microphone health and AST
AudioSet classification.

- :mod:`agent.analysis.levels`: A/C/Z-weighted, F/S time-weighted levels, percentiles and
  one-third-octave bands in dB re 20 µPa (IEC 61672-1, IEC 61260-1).
- :mod:`agent.analysis.indices`: ACI, ADI, AEI, BI, NDSI, Hf, Ht (scikit-maad's definitions).
- :mod:`agent.analysis.health`: clipping, DC offset, silence, mains hum.
- :mod:`agent.analysis.acoustics`: the three above per window, state carried across windows.
- :mod:`agent.analysis.models`: model provenance (id, sha256), resolution of a hub id or a
  local directory, and the random-weight test scaffold.
- :mod:`agent.analysis.features`: the AST log-mel fbank input in numpy (equal to
  transformers' ``ASTFeatureExtractor``), shared by both backends.
- :mod:`agent.analysis.classifier`: multi-label AST classification, ``torch`` and ``onnx``
  backends chosen through the ``BACKENDS`` registry; ``onnx`` needs neither torch,
  transformers nor optimum.
- :mod:`agent.analysis.export` and :mod:`agent.analysis.fusion`: ``model export`` (ONNX,
  attention fusion, int8, verification, manifest).

Importing this package (or any of its modules) loads no model and imports neither torch,
transformers, optimum nor scipy.signal; those are imported when first used. scikit-maad is
never imported at run time (its definitions are reproduced and tested against it).
"""
