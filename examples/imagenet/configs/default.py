"""The ImageNet example's default configuration: the 90-epoch ResNet-50 recipe, grouped.

    python examples/imagenet/train.py --config=examples/imagenet/configs/default.py \\
        --config.model.name=resnet18 --config.optim.learning_rate=0.05

Each leaf sets the flat flag of its name (``optim.momentum`` sets ``--momentum``;
``model.name`` sets ``--model``); a flat flag given on the command line wins. Where the data
is, how many devices and workers, and how the run is shown stay flat flags only.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = 256
    config.num_epochs = 90.0
    config.num_steps = -1  # > 0: train this many steps in total
    config.eval_batch_size = 256
    config.log_every_steps = 100
    config.checkpoint_keep = 3

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "imagenet"
    config.data.image_size = 224

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"  # sets --model
    config.model.num_filters = 64
    config.model.small_inputs = False
    config.model.zero_init_last_bn = True
    config.model.half_precision = False

    config.optim = ml_collections.ConfigDict()
    config.optim.learning_rate = 0.1
    config.optim.momentum = 0.9
    config.optim.nesterov = True
    config.optim.weight_decay = 1e-4
    config.optim.label_smoothing = 0.0
    config.optim.warmup_epochs = 5.0
    return config
