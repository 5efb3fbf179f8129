"""Evaluation: edit scores, chat efficacy, perplexity and fluency, the data sets, and the sequential-editing benchmark."""
