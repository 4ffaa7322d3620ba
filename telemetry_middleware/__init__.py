"""Anonymous, privacy-first usage telemetry for Python developer tools."""
