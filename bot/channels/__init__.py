"""Channel adapters: verify the platform's signature or secret, normalise to Event, render replies."""
