"""Face embedding with an ArcFace-style ONNX recognizer: the embed stage."""
