"""Re-ID evaluation: distance matrices, CMC/mAP (torchreid-compatible), re-ranking."""

from .distance import compute_distance_matrix, cosine_distance, euclidean_squared_distance
from .rank import DEFAULT_CHUNK_BYTES, evaluate_from_features, evaluate_rank
from .reranking import re_ranking

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "compute_distance_matrix",
    "cosine_distance",
    "euclidean_squared_distance",
    "evaluate_from_features",
    "evaluate_rank",
    "re_ranking",
]
