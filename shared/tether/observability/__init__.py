"""What Tether tells its operators: logs, metrics, traces, Sentry reports, redaction."""
