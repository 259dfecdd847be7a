"""momo-batch: bulk prompt jobs against hosted LLM agent APIs."""

__version__ = "0.1.0"
