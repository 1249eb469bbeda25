"""Autoscaling checked against the truth: the HPA algorithm (hpa) replayed over Prometheus data
(replay), as ``inferwatch autoscale replay`` (cli)."""
