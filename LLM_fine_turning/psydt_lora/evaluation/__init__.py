"""Evaluation: the batch test on the test split, reference metrics, the report.

Imports inference, safety, data and the ground floor."""
