"""Each model's training recipe, written out in full: every option of a run and every argument of its builder.

What `fit MODEL` trains is MODEL's recipe here, then the tuned file (tuning/MODEL/best_hparams.json, or
--hparams), then the command-line flags. `config.RunConfig` takes its defaults from `CNN`, and the
KerasTuner search spaces (models/spaces.py) start from these values. The recipes are plain data: this
module imports nothing, so `--help` stays fast.

The builders' own keyword defaults (models/builders.py) are not a recipe: they are what a partial
`--model-args` (and the commands of older run records) completes with, and do not change.
"""

MLP = dict(
    model="mlp",  # registered builder (models.mlp)
    model_args=dict(
        hidden=[1536, 768],  # units of the hidden Dense layers
        dropout=0.3,  # dropout after each hidden layer
        leaky_alpha=0.1,  # LeakyReLU's negative slope
    ),
    label_smoothing=0.1,  # of the cross-entropy
    tta=False,  # no test-time augmentation
    tta_translate=False,  # (so no translated views)
    epochs=40,  # training epochs
    batch_size=256,  # images per step
    optimizer="adamw",  # AdamW
    learning_rate=2e-3,  # peak learning rate
    weight_decay=0.05,  # decoupled, not on BatchNorm or biases
    warmup=0.05,  # linear warm-up over the first 5 % of the steps
    decay="cosine",  # then cosine decay to zero
    patience=0,  # no early stopping
    ema=0.0,  # no weight averaging
    low_res=0,  # no progressive resizing (the MLP's Dense layers fix the input size)
    low_res_epochs=0,  # (so no low-resolution epochs)
    time_budget=None,  # a fixed number of epochs, not a time budget
    crop_pad=2,  # random crops from images padded by 2 pixels
    flip=True,  # random horizontal flips
    cutout_size=0,  # no cutout
    noise=0.0,  # no pixel noise
    jpeg=0,  # no JPEG re-encoding
    seed=0,  # seed of the initialisation and the batches (the validation split has its own, 0)
    val_size=5000,  # validation images carved from the training set
    train_size=None,  # train on all the other training images
    test_set=True,  # score the selected epoch once on the test set
    precision="auto",  # bfloat16 with AMX, float16 on GPUs, a probe with AVX512-BF16 alone, else float32
    jit_compile="auto",  # Keras' choice: no XLA on TensorFlow's CPU
    distribute="none",  # one device
)

# Adopted from the recipe study (docs/recipe-study.md): airbench's whitening stem and identity init, Muon on the
# convolutions, flip-and-translate TTA, and weight averaging (kept only where it scores higher on validation).
# Robust training (docs/robustness.md): a less sharp whitening (eps 0.01) and Gaussian noise on half the images keep
# clean validation accuracy within noise and raise the mean corruption accuracy by 12 points.
CNN = dict(
    model="cnn",  # registered builder (models.cnn)
    model_args=dict(
        widths=[96, 256, 512],  # channels of the three stages
        stem_width=32,  # channels of a conv stem (unused with the whitening stem)
        depth=1,  # residual convs per stage
        dropout=0.0,  # no dropout before the classifier
        bn_momentum=0.9,  # BatchNorm's moving-average momentum
        logit_scale=0.125,  # logits scaled down, for stable early high-learning-rate steps
        stem="whiten",  # airbench's frozen 2x2 patch-whitening stem
        dirac=True,  # stage convs start as the identity
        whiten_eps=0.01,  # added to the patch covariance's eigenvalues: a less sharp whitening
        data_format="channels_last",  # feature maps N x H x W x C: the faster layout (docs/benchmarks.md)
    ),
    label_smoothing=0.2,  # of the cross-entropy
    tta=True,  # the saved model averages each image and its mirror image
    tta_translate=True,  # and the image shifted one pixel each way (airbench's 6 views)
    epochs=15,  # training epochs
    batch_size=256,  # images per step
    optimizer="muon",  # Muon on the convolution kernels, AdamW on the rest
    learning_rate=0.01,  # peak learning rate (Muon's scale)
    weight_decay=5e-4,  # decoupled, not on BatchNorm or biases
    warmup=2 / 15,  # linear warm-up over the first 2 of the 15 epochs
    decay="cosine",  # then cosine decay to zero
    patience=0,  # no early stopping
    ema=0.99,  # moving average of the weights, kept where it scores higher on validation
    low_res=0,  # no progressive resizing
    low_res_epochs=0,  # (so no low-resolution epochs)
    time_budget=None,  # a fixed number of epochs, not a time budget
    crop_pad=4,  # random crops from images padded by 4 pixels
    flip=True,  # random horizontal flips
    cutout_size=0,  # no cutout
    noise=0.05,  # Gaussian pixel noise (sd up to 0.05 x 255) on half the images
    jpeg=0,  # no JPEG re-encoding
    seed=0,  # seed of the initialisation and the batches (the validation split has its own, 0)
    val_size=5000,  # validation images carved from the training set
    train_size=None,  # train on all the other training images
    test_set=True,  # score the selected epoch once on the test set
    precision="auto",  # bfloat16 with AMX, float16 on GPUs, a probe with AVX512-BF16 alone, else float32
    jit_compile="auto",  # Keras' choice: no XLA on TensorFlow's CPU (measured: docs/benchmarks.md)
    distribute="none",  # one device
)

RECIPES = {"mlp": MLP, "cnn": CNN}
