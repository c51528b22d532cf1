"""fer-edge: facial-expression recognition for the Raspberry Pi (device package, no TensorFlow)."""
__version__ = "0.1.0"
