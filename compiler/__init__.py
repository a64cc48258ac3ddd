"""mwc — the MAX Whisper Compiler.

Data flows one way: checkpoint → weights → graph → precision → artifact → loader.
"""

__version__ = "0.1.0"
