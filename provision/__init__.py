"""provision: make a GPU machine ready to run or fine-tune a multimodal LLM, reproducibly."""

__version__ = "0.1.0"
