"""Workstation side of fer-edge: Keras model in, quantized TFLite model with its meaning out."""
