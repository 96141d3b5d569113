"""The one-command demo: Label Studio and the backend on loopback, a derived pool, the whole loop."""
