"""The tiny Spirograph run of the reliability tests, as a config file for the command line:

  python -m mclr_jax.main --config=tests/reliability/tiny_config.py --workdir=DIR

(tests.tiny's width-4 ResNet-18, batch 16, 64 training draws; the final evaluation kept small).
"""

from tests.tiny import tiny_spirograph_config


def get_config(num_train_steps: str = "12"):
  config = tiny_spirograph_config(num_train_steps=int(num_train_steps))
  config.log_every_steps = 2
  config.checkpoint_every_steps = 4
  config.keep_checkpoints = 3
  config.eval.feature_average_copies = 0
  config.eval.max_train_examples = 64
  return config
