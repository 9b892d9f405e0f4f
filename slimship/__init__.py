"""slimship: fine-tune, compress, export and ship transformer text classifiers.

Layers (imports flow one way, checked by tests/test_layers.py):
    slimship.core                      artifacts, data, metrics, config, errors, reports, ONNX runtime
    slimship.train, slimship.serve     fine-tuning (torch) / the HTTP service (no torch)
    slimship.compress                  distillation, pruning, vocabulary, export, quantization, search
    slimship.pipeline, slimship.cli    the whole chain and the command line
"""

__version__ = "0.1.0"
