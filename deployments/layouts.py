"""File names of on-disk model layouts that loaders read and test-model builders write.

A leaf module (imports nothing of the gateway): the shape builders (``shape_models``, which the
source loader imports) and the family modules (which import the source loader) both need these
names, and taking them from the family module would close an import cycle.
"""

# open_clip's hub layout: the model config, then the weight files in the order tried
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
