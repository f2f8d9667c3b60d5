"""The injection / serialisation core shared by every adapter."""
