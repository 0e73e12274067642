"""Generation arithmetic: prompts, the batched frame step, sampling, streaming decoding."""
