"""KerasTuner search spaces of the models, as overrides of each model's recipe."""


def mlp_space(hp):
    """KerasTuner search space of the MLP, as overrides of its default recipe (the defaults are that recipe)."""
    return {
        "model_args": {"hidden": [hp.Choice("hidden1", [512, 1024, 1536, 2048], default=1536),
                                  hp.Choice("hidden2", [256, 512, 768, 1024], default=768)],
                       "dropout": hp.Float("dropout", 0.0, 0.5, step=0.1, default=0.3)},
        "learning_rate": hp.Float("learning_rate", 3e-4, 5e-3, sampling="log", default=2e-3),
        "weight_decay": hp.Float("weight_decay", 1e-3, 0.2, sampling="log", default=0.05),
        "label_smoothing": hp.Float("label_smoothing", 0.0, 0.3, step=0.1, default=0.1),
        "batch_size": hp.Choice("batch_size", [128, 256, 512], default=256),
    }


CNN_WIDTHS = {"narrow": [64, 192, 384], "base": [96, 256, 512], "wide": [96, 384, 768]}


def cnn_space(hp):
    """KerasTuner search space of the CNN: width, depth, optimisation and augmentation strength
    (the defaults are its built-in recipe)."""
    return {
        "model_args": {"widths": CNN_WIDTHS[hp.Choice("width", list(CNN_WIDTHS), default="base")],
                       "depth": hp.Int("depth", 1, 2, default=1)},
        # The learning rate's scale is the optimizer's: the tuned file records which one it was searched with.
        "optimizer": hp.Fixed("optimizer", "muon"),
        "learning_rate": hp.Float("learning_rate", 0.003, 0.03, sampling="log", default=0.01),
        "weight_decay": hp.Float("weight_decay", 1e-4, 2e-3, sampling="log", default=5e-4),
        "label_smoothing": hp.Float("label_smoothing", 0.0, 0.3, step=0.1, default=0.2),
        "batch_size": hp.Choice("batch_size", [128, 256, 512], default=256),
        "crop_pad": hp.Choice("crop_pad", [2, 4], default=4),
        "cutout_size": hp.Choice("cutout_size", [0, 8, 12], default=0),
    }
