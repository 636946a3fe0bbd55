"""The MNIST example's default configuration: the flat flags' defaults, grouped.

    python examples/mnist/train.py --config=examples/mnist/configs/default.py \
        --config.optimizer.learning_rate=0.05 --config.num_epochs=2

Each leaf sets the flat flag of its name (``optimizer.learning_rate`` sets
``--learning_rate``); a flat flag given on the command line wins. Copy this file to start a
configuration of your own.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 10
    config.batch_size = 128

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9

    config.data = ml_collections.ConfigDict()
    config.data.num_train_examples = 0  # 0: all
    return config
