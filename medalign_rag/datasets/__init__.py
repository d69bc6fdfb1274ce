"""Datasets the pipeline can run on; `synthetic` is the built-in default cohort."""

from medalign_rag.datasets.synthetic import CohortSummary, PatientSummary, generate_cohort, generate_patient

__all__ = ["CohortSummary", "PatientSummary", "generate_cohort", "generate_patient"]
