"""The bottom layer: artifacts, data, metrics, config, errors, reports and the ONNX inference path.

Nothing here imports torch or transformers, and nothing here imports another slimship package.
"""
