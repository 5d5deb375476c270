"""Data: the CIFAR-100 files (finding, downloading, safe loading, the normalisation constants), the validation
split, the class names, and the tf.data pipelines that feed `fit`.

`from cifar_keras import data; data.load(...)`: the public names of `cifar100` and `splits` are gathered here.
"""

from cifar_keras.data.cifar100 import (ARCHIVE_DIR, ARCHIVE_MD5, ARCHIVE_NAME, MEAN, NUM_CLASSES,
                                       NUM_SUPERCLASSES, ORIGIN, STD, Split, download, load, load_meta,
                                       load_pickle, load_split, locate)
from cifar_keras.data.splits import (SPLIT_SEED, describe_split, indices_sha256, model_validation_split,
                                     recorded_split, stratified_split, train_val_split, validation_indices)
