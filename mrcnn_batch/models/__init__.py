
# The entries live beside their builders and register themselves on import; the registry
# imports none of them (entries -> registry, never back).
from mrcnn_batch.models import demo, torchvision_models  # noqa: F401
