"""The model: building mimic-video (backbone and action head), checkpoints, the cached backbone features, sampling the
library's way, and training the head. Imports core and data."""
