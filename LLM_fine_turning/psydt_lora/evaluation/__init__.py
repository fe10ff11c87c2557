"""Evaluation: the batch run on the test split (generate with the loaded model, score against the reference
replies), reference metrics, the report. The LLM judge is its own wing (judge/).

Imports inference, safety, data and the ground floor."""
