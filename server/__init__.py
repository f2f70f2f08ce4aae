"""expert-gateway: serve many fine-tuned experts of one base model from one vLLM engine."""
