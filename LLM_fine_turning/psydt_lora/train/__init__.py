"""Training: the LoRA model set-up, the Trainer and its loss head.

Imports data and the ground floor."""
