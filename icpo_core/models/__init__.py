"""Base model materialisation (offline GGUF default, hub snapshot, local folder)."""
