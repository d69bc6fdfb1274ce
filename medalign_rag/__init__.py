"""medalign-rag: retrieval-augmented answering and evaluation over longitudinal EHRs."""

__version__ = "0.1.0"
