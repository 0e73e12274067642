"""Request ids, one log line per request, and Prometheus metrics."""
