"""The analyses of one model: validation, the denoising probe, the K sweep, backbone recompute, video-denoising depth,
early stopping, and the metrics tables they give. Imports core, data and model."""
