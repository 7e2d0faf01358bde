"""SegFormer backend for geoseg: LoRA (or full) fine-tuning on chip datasets, whole-scene prediction."""

__version__ = "0.1.0"
