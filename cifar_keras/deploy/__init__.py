"""Shipping a trained model: export formats, one loader per runtime, prediction on image files, a REST client."""
