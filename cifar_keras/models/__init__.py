"""Models: builders (`mlp`, `cnn`), test-time augmentation wrappers, search spaces, the registry, FLOP counts.

`from cifar_keras import models; models.cnn()` works like `keras.applications`: the public names of the
submodules are gathered here.
"""

from cifar_keras.models.builders import (classifier, cnn, conv_bn_relu, dirac_init, mlp, normalise,
                                         whiten_from_data, with_input_size, WHITEN_DIMS)
from cifar_keras.models.registry import (MODELS, ModelSpec, check_model_args, full_model_args, get_spec,
                                         load_keras_model)
from cifar_keras.models.spaces import CNN_WIDTHS, cnn_space, mlp_space
from cifar_keras.models.tta import move_pixels, tta_inner, tta_kind, tta_views, with_tta, with_tta_kind
