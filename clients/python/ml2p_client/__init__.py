"""ml2p-client: tag images with any labels through an ML2P server (REST or gRPC).

    from ml2p_client import Client
    with Client("http://localhost:8000") as client:
        print(client.tag("photo.jpg", ["dog", "a red car", "sofa"]).top(3))
"""

from ml2p_client.client import AsyncClient, Client, image_bytes
from ml2p_client.errors import ML2PError
from ml2p_client.models import (
    Embedding,
    Embeddings,
    LabelWarning,
    ModelInfo,
    RelevanceMap,
    Tag,
    TagResult,
    VectorsModel,
    Vocabulary,
)
from ml2p_client.retry import Retry

__all__ = ["AsyncClient", "Client", "Embedding", "Embeddings", "LabelWarning", "ML2PError",
           "ModelInfo", "RelevanceMap", "Retry", "Tag", "TagResult", "VectorsModel", "Vocabulary",
           "image_bytes"]
