"""SMS gateways: the sandbox (default) and real providers."""
