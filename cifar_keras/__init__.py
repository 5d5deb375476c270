"""cifar_keras: train, tune, evaluate and serve CIFAR-100 classifiers with Keras 3."""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) hides the useful output; a user who asks
# for TensorFlow's info or warnings (level 0 or 1) keeps it (hardware.import_tensorflow_quietly).
USER_TF_LOG_LEVEL = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
