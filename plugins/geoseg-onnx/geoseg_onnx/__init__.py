"""geoseg-onnx: predict with ONNX segmentation models through ONNX Runtime."""
