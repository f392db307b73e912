"""Pure algorithms (numpy / scikit-learn): no Dagster imports here."""
