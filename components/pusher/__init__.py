"""SafePusher: pushes blessed models atomically into the TF Serving layout, after a pre-push check."""
