"""Compression: distillation, structured pruning, ONNX export, INT8 quantization and the budgeted search."""
