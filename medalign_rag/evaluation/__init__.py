"""Evaluation: retrieval and answer metrics, FHIR-AgentBench answer matching, agreement with clinicians.

Submodules import their heavy dependencies (ranx, rouge-score, sentence-transformers) only when used.
"""
