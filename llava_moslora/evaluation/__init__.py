"""Evaluation: answering benchmark questions with a checkpoint and scoring them."""
