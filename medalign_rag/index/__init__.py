"""Index stage: one FAISS index per patient, built incrementally and atomically."""
