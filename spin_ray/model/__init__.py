"""The HMR regressor."""
