"""Built-in models: ResNet-18/50 and MobileNetV2 by name, and their structured variants.

>>> from tvm_structconv.models import create_model, create_structured, list_models
>>> list_models()
['mobilenet_v2', 'resnet18', 'resnet50']
>>> structured = create_structured("resnet18")       # every 3x3 conv: c = C, n = 2
>>> structured.cost().summary()
'1.81 GMAC -> 0.88 GMAC (2.05x), 11.69 M -> 5.59 M params (2.09x)'
"""

from tvm_structconv.models.cost import ModelCost, model_cost
from tvm_structconv.models.mobilenet import MobileNetV2, mobilenet_v2
from tvm_structconv.models.registry import create_model, list_models, register_model
from tvm_structconv.models.resnet import ResNet, resnet18, resnet50
from tvm_structconv.models.structured import (
    CALIBRATION_PIXELS,
    DEFAULT_PLAN,
    StructuredModel,
    create_structured,
)

__all__ = [
    "CALIBRATION_PIXELS",
    "DEFAULT_PLAN",
    "MobileNetV2",
    "ModelCost",
    "ResNet",
    "StructuredModel",
    "create_model",
    "create_structured",
    "list_models",
    "mobilenet_v2",
    "model_cost",
    "register_model",
    "resnet18",
    "resnet50",
]
