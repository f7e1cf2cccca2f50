"""reid-train: trainer and evaluator for mask-guided re-ID models (MMGA, MGRAN)."""
