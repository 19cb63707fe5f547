"""llava-moslora: LLaVA visual instruction tuning with MoSLoRA and MoE-LoRA adapters."""
__version__ = "0.1.0"
