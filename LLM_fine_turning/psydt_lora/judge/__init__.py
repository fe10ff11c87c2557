"""The judge: LLM-as-judge over any OpenAI-compatible endpoint -- rubric scores, pairwise verdicts in both
orders, the crisis check, CPsyCounE turn items, generation through an endpoint, the judge's report.

Imports the batch-run evaluation (its context rendering and metrics), inference, safety, data and the ground floor."""
