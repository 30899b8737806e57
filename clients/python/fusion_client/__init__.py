"""Python SDK of the fusion multimodal model gateway.

>>> from fusion_client import FusionClient
>>> with FusionClient() as client:                     # $FUSION_URL, $FUSION_API_KEY
...     result = client.run("caption_then_classify", image="cat.png", labels=["cat", "dog"])
...     result.outputs["labels"][0]
"""

from fusion_client._version import __version__
from fusion_client.chat import ChatResult, ChatUsage, json_schema
from fusion_client.client import AsyncFusionClient, FusionClient
from fusion_client.encoding import decode_wav, encode_wav
from fusion_client.errors import (
    BadRequest,
    ConnectionFailed,
    Forbidden,
    FusionError,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    ServerError,
    StepFailed,
    Timeout,
    Unauthorized,
)
from fusion_client.types import (
    BatchResult,
    CacheStats,
    CallResult,
    Event,
    InputSpec,
    ModelInfo,
    PipelineInfo,
    PipelineResult,
    ProgressEvent,
    ResultEvent,
    StartEvent,
    StepEvent,
    StepResult,
    StepSpec,
    TokenEvent,
)

__all__ = [
    "AsyncFusionClient",
    "BadRequest",
    "BatchResult",
    "CacheStats",
    "CallResult",
    "ChatResult",
    "json_schema",
    "ChatUsage",
    "ConnectionFailed",
    "Event",
    "Forbidden",
    "InputSpec",
    "FusionClient",
    "FusionError",
    "ModelInfo",
    "NotFound",
    "Overloaded",
    "QuotaExceeded",
    "RateLimited",
    "PipelineInfo",
    "PipelineResult",
    "ProgressEvent",
    "ResultEvent",
    "ServerError",
    "StartEvent",
    "StepEvent",
    "TokenEvent",
    "StepFailed",
    "StepResult",
    "StepSpec",
    "Timeout",
    "Unauthorized",
    "__version__",
    "decode_wav",
    "encode_wav",
]
