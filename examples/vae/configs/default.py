"""The VAE example's default configuration: the flat flags' defaults, grouped.

    python examples/vae/train.py --config=examples/vae/configs/default.py \\
        --config.model.latents=32 --config.num_epochs=5

Each leaf sets the flat flag of its name (``model.latents`` sets ``--latents``); a flat flag
given on the command line wins. Copy this file to start a configuration of your own.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_epochs = 30
    config.batch_size = 128
    config.learning_rate = 1e-3

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "fashion_mnist"
    config.data.num_train_examples = 0  # 0: all

    config.model = ml_collections.ConfigDict()
    config.model.latents = 20
    config.model.hidden = 500

    config.eval = ml_collections.ConfigDict()
    config.eval.iwae_samples = 100  # 0: skip the importance-weighted estimate
    return config
