"""Trainer for experts: LoRA adapters and soft prompts (PEFT)."""
