"""The DCGAN example's default configuration: the flat flags' defaults, grouped.

    python examples/gan/train.py --config=examples/gan/configs/default.py \\
        --config.model.g_features=64 --config.num_epochs=5

Each leaf sets the flat flag of its name (``model.g_features`` sets ``--g_features``); a
flat flag given on the command line wins. Copy this file to start a configuration of your
own. Where the outputs go (``--output_dir``, ``--classifier_dir``) stays a flat flag.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 20
    config.batch_size = 64

    config.optimizer = ml_collections.ConfigDict()  # Adam, the same for both networks
    config.optimizer.learning_rate = 2e-4
    config.optimizer.beta1 = 0.5

    config.model = ml_collections.ConfigDict()
    config.model.g_features = 32
    config.model.d_features = 32
    config.model.conditional = True  # class-conditional G and D (False: a plain DCGAN)
    config.model.ema_decay = 0.999  # the averaged generator that is sampled and scored

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"
    config.data.num_train_examples = 0  # 0: all

    config.eval = ml_collections.ConfigDict()
    config.eval.num_eval_samples = 10000
    return config
