"""Operating the service: hosting versions (load, prove, swap, follow the store, shadow),
drift per station, feedback capture, telemetry, bundle uploads."""
