"""Video input: which frames to read, at what size, and the patch tensors Qwen2.5-VL takes."""
