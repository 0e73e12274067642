"""Text handling before synthesis."""
