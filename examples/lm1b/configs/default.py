"""The language-model example's default configuration: the flat flags' defaults, grouped.

nanoGPT's character-level CPU run on Tiny Shakespeare (4 layers, 4 heads, width 128,
context 64, batch 12, 2,000 steps). Another configuration, from the repository root:

    python -m examples.lm1b.train --config=examples/lm1b/configs/default.py \\
        --config.model.num_layers=6 --config.num_steps=5000

Each leaf sets the flat flag of its name (``model.num_layers`` sets ``--num_layers``); a
flat flag given on the command line wins. Copy this file to start a configuration of your
own.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_steps = 2000
    config.batch_size = 12
    config.steps_per_call = 10  # training steps per compiled call (lax.scan)

    config.data = ml_collections.ConfigDict()
    config.data.tokenizer = "char"  # or "sentencepiece" (LM1b always uses it)
    config.data.vocab_size = 8000  # sentencepiece only
    config.data.eval_fraction = 0.1
    config.data.context = 64

    config.model = ml_collections.ConfigDict()
    config.model.emb_dim = 128
    config.model.num_heads = 4
    config.model.num_layers = 4
    config.model.mlp_dim = 0  # 0: 4 * emb_dim
    config.model.max_len = 0  # 0: context
    config.model.position = "learned"
    config.model.tied_embeddings = True
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0
    config.model.dtype = "float32"

    config.optimizer = ml_collections.ConfigDict()  # AdamW, warm-up then cosine decay
    config.optimizer.learning_rate = 1e-3
    config.optimizer.min_learning_rate = 1e-4
    config.optimizer.warmup_steps = 100
    config.optimizer.weight_decay = 0.1
    config.optimizer.beta1 = 0.9
    config.optimizer.beta2 = 0.99
    config.optimizer.grad_clip = 1.0

    config.eval = ml_collections.ConfigDict()
    config.eval.eval_every = 250
    config.eval.eval_batch_size = 64
    config.eval.eval_batches = 0  # 0: the whole held-out text
    config.eval.random_eval_batches = 200  # nanoGPT's estimate at the end (0: off)

    config.sample = ml_collections.ConfigDict()
    config.sample.sample_length = 500
    config.sample.temperature = 0.8
    config.sample.top_k = 40
    return config
