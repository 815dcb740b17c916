"""The export folder's layout: format names, file names and the ONNX input/output names (no heavy imports)."""

from __future__ import annotations

FORMATS = ("safetensors", "timm", "onnx", "pt2")
INT8_MAX_DROP = 0.01  # default: int8 may lose at most 1 point of test accuracy against fp32
WEIGHTS_FILE = "model.safetensors"     # safetensors, and the weights of the timm folder
TIMM_CONFIG_FILE = "config.json"       # timm's hub config
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
PT2_FILE = "model.pt2"
CARD_FILE = "card.json"                # the model card's facts
README_FILE = "README.md"              # the model card in words
RUN_CONFIG_FILE = "config.run.yaml"    # the run's (or the sweep point's) config, copied beside the model
INPUT_NAME, OUTPUT_NAME, BATCH_AXIS = "images", "logits", "batch"
