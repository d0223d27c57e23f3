"""Shipping a pruned model: dense / compressed sparse / ONNX export, and inspection."""
