"""The mwc runtime: audio → mel → encoder → decoding loop → text, with only ``max`` and ``numpy``.

The library uses these modules directly; every artifact carries a copy of them (as ``mwc_runtime/``) next to its
generated ``loader.py`` — one implementation, shipped twice.
"""
