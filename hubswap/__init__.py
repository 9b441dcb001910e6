"""hubswap: merged LLMs by layer swapping, built from recipes on the Hugging Face Hub."""

__version__ = "0.1.0"
