"""SafePusher: pushes blessed models atomically into the TF Serving layout, after a pre-push check.

Imports only components/ and the libraries, like every component package.
"""
