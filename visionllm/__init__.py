"""VisionLLM: a large language model as an open-ended decoder for vision-centric tasks."""

__version__ = "0.1.0"
