"""Several processes or machines: the cluster settings and launch for keras.distribution on JAX."""
