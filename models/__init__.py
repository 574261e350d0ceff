"""PyTorch side: backbones, the ML2P encoder, baselines, label embedders, data, training, export."""
