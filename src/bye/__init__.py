"""BYE: find backdoor samples in a multimodal fine-tuning submission from the model's attention."""

__version__ = "0.1.0"
