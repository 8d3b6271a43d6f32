"""The FastAPI service: serves the model store's active bundle exactly as it was validated."""
