"""Training: argument dataclasses, the LlavaTrainer, and the `train` entry point."""
