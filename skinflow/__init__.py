"""SkinFlow: reproducible dermatology VLM pipeline."""
__version__ = "0.1.0"
