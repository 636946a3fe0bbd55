"""The segmentation example's default configuration: the flat flags' defaults, grouped.

    python examples/segmentation/train.py --config=examples/segmentation/configs/default.py \\
        --config.data.num_train_canvases=2000 --config.num_epochs=1

Each leaf sets the flat flag of its name (``data.num_train_canvases`` sets
``--num_train_canvases``); a flat flag given on the command line wins. Copy this file to start
a configuration of your own.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 4
    config.batch_size = 16
    config.learning_rate = 8e-3
    config.warmup_epochs = 0.4

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"
    config.data.num_train_canvases = 64000
    config.data.num_test_canvases = 2000
    config.data.data_seed = 0
    return config
