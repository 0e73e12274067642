"""Voice names: built-in speakers and OpenAI aliases."""
