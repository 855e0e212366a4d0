"""The DataGate component: stops a run on schema anomalies, drift or training/serving skew."""
