"""HTTP surface: the web chat page and API, health checks and sandbox views."""
