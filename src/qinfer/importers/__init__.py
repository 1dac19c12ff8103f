"""Importers from exchange formats into qinfer's IR (ONNX only for now)."""
