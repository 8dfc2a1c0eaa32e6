"""Channel adapters: one module per platform (verify, parse into InboundEvent, send)."""
