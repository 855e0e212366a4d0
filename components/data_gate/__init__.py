"""The DataGate component: stops a run on schema anomalies, drift or training/serving skew.

Imports only components/ and the libraries, like every component package.
"""
