"""KerasTuner search spaces of the models, as overrides of each model's recipe: every default is the recipe's
(recipes.py), so a search's first trial is the recipe."""

from cifar_keras.recipes import CNN, MLP


def mlp_space(hp):
    """KerasTuner search space of the MLP, as overrides of its recipe (the defaults are that recipe)."""
    hidden1, hidden2 = MLP["model_args"]["hidden"]
    return {
        "model_args": {"hidden": [hp.Choice("hidden1", [512, 1024, 1536, 2048], default=hidden1),
                                  hp.Choice("hidden2", [256, 512, 768, 1024], default=hidden2)],
                       "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1, default=MLP["model_args"]["dropout"])},
        "learning_rate": hp.Float("learning_rate", 3e-4, 5e-3, sampling="log", default=MLP["learning_rate"]),
        "weight_decay": hp.Float("weight_decay", 1e-3, 0.2, sampling="log", default=MLP["weight_decay"]),
        "label_smoothing": hp.Float("label_smoothing", 0.0, 0.3, step=0.1, default=MLP["label_smoothing"]),
        "batch_size": hp.Choice("batch_size", [128, 256, 512], default=MLP["batch_size"]),
    }


CNN_WIDTHS = {"narrow": [64, 192, 384], "base": [96, 256, 512], "wide": [96, 384, 768]}


def cnn_space(hp):
    """KerasTuner search space of the CNN: width, depth, optimisation and augmentation strength
    (the defaults are its recipe)."""
    recipe_width = next(name for name, widths in CNN_WIDTHS.items() if widths == CNN["model_args"]["widths"])
    return {
        "model_args": {"widths": CNN_WIDTHS[hp.Choice("width", list(CNN_WIDTHS), default=recipe_width)],
                       "depth": hp.Int("depth", 1, 2, default=CNN["model_args"]["depth"])},
        # The learning rate's scale is the optimizer's: the tuned file records which one it was searched with.
        "optimizer": hp.Fixed("optimizer", CNN["optimizer"]),
        "learning_rate": hp.Float("learning_rate", 0.003, 0.03, sampling="log", default=CNN["learning_rate"]),
        "weight_decay": hp.Float("weight_decay", 1e-4, 2e-3, sampling="log", default=CNN["weight_decay"]),
        "label_smoothing": hp.Float("label_smoothing", 0.0, 0.3, step=0.1, default=CNN["label_smoothing"]),
        "batch_size": hp.Choice("batch_size", [128, 256, 512], default=CNN["batch_size"]),
        "crop_pad": hp.Choice("crop_pad", [2, 4], default=CNN["crop_pad"]),
        "cutout_size": hp.Choice("cutout_size", [0, 8, 12], default=CNN["cutout_size"]),
    }
