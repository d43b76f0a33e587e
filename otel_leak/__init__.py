"""otel-leak."""
