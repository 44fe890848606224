"""What operators see: Prometheus metrics, the probe port, and logging."""
