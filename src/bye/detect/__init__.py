"""Backdoor-sample detection from the attention the answer position pays to the image."""
