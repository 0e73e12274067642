"""Audio in and out: encoders, tempo, reference-audio decoding and fetching."""
